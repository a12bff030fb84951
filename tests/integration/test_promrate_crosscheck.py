"""``rate`` computed by watchdogd against the real Prometheus of the test bed, on generated counters.

The series (regular, with resets, sparse, starting or ending inside the window)
are written with their exact timestamps into a TSDB block (``promtool tsdb
create-blocks-from openmetrics``), a Prometheus is started on it, and
``rate(x[60s])`` is asked at times that fall between samples (Prometheus 2.x
closes the range on its left edge, watchdogd does not: no sample sits on it).

Prometheus 2.52 changed the order of two extrapolation limits (see
``watchdogd.sources.promrate.extrapolated_rate``); watchdogd follows 2.52 and
later. Where the two orders give the same answer, watchdogd must agree with
the server to 1e-9; where they differ (a counter appearing inside the window),
the test bed's older server must give the old order's answer, and watchdogd
the new one's, so both formulas are checked against a real server.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from watchdogd.sources.promrate import counter_increase, extrapolated_rate

pytestmark = pytest.mark.integration

Point = tuple[float, float]
RANGE = 60.0


def old_order(points: Sequence[Point], start: float, end: float) -> float:
    """Prometheus before 2.52: the zero point first, then the 1.1-interval threshold."""
    (first_t, first_v), (last_t, _) = points[0], points[-1]
    increase = counter_increase(points)
    sampled = last_t - first_t
    average = sampled / (len(points) - 1)
    to_start, to_end = first_t - start, end - last_t
    if increase > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / increase))
    threshold = average * 1.1
    interval = sampled + (to_start if to_start < threshold else average / 2)
    interval += to_end if to_end < threshold else average / 2
    return increase * (interval / sampled) / (end - start)


def series(base: float, rng: random.Random) -> dict[str, list[Point]]:
    regular, value = [], 0.0
    for i in range(40):
        value += rng.randint(0, 30)
        regular.append((base + 15 * i, value))
    resets, value = [], 500.0
    for i in range(40):
        value = rng.randint(0, 20) if i in (9, 23) else value + rng.randint(1, 40)
        resets.append((base + 15 * i, value))
    sparse, value, at = [], 10.0, base
    while at < base + 600:
        sparse.append((at, value))
        at += rng.choice((5.0, 9.0, 21.0, 33.0))
        value += rng.randint(0, 50)
    late = [(base + 300 + 15 * i, 7.0 + 7 * i) for i in range(20)]  # appears inside some windows
    early = [(base + 15 * i, 100.0 + 3 * i) for i in range(16)]  # ends inside some windows
    return {"regular": regular, "resets": resets, "sparse": sparse, "late": late, "early": early}


def openmetrics(all_series: dict[str, list[Point]]) -> str:
    lines = []
    for name, points in all_series.items():
        lines.append(f"# TYPE x_{name} counter")
        lines.extend(f"x_{name}_total {value:g} {at:.3f}" for at, value in points)
    return "\n".join(lines) + "\n# EOF\n"


def test_rate_agrees_with_the_test_bed_prometheus(prometheus_server: Any, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: start the test bed with scripts/testbed.sh", pytrace=False)
    rng = random.Random(20261127)
    base = float(int(time.time()) - 50 * 60)  # inside the server's 1h retention
    generated = series(base, rng)
    source = tmp_path / "series.om"
    source.write_text(openmetrics(generated))
    data = tmp_path / "prometheus-0" / "data"
    data.mkdir(parents=True)
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    prom = prometheus_server()
    assert prom.data_dir == data
    compared = diverging = 0
    for name, points in generated.items():
        for at in (base + 62.5 + 37.0 * k for k in range(15)):
            inside = [p for p in points if at - RANGE < p[0] <= at]
            if len(inside) < 2:
                continue
            answer = prom.query(f"rate(x_{name}_total[60s])", at)
            assert len(answer) == 1, (name, at, answer)
            theirs = float(answer[0]["value"][1])
            ours = extrapolated_rate(inside, at - RANGE, at)
            before = old_order(inside, at - RANGE, at)
            if abs(ours - before) <= 1e-12:
                assert ours == pytest.approx(theirs, abs=1e-9, rel=0), (name, at, inside)
                compared += 1
            else:
                assert before == pytest.approx(theirs, abs=1e-9, rel=0), (name, at, inside)
                diverging += 1
    assert compared >= 40 and diverging >= 1, (compared, diverging)
