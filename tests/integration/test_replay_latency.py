"""``watchdogd replay`` of a latency rule over a histogram recorded in a real Prometheus.

Fifty minutes of two services' latency histograms, each served by two instances, are written into
the server's storage with ``promtool tsdb create-blocks-from openmetrics``: ``app="steady"`` keeps
its latency, ``app="slower"`` takes twice as long from 35m on. The rules pick one by a label
matcher; replay range-queries ``sum by (le) (lat_seconds_bucket{app=...})``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.latency_history import BOUNDS, cumulative
from tests.testbed.prometheus import prometheus_with_history, replay_argv, replay_config
from watchdogd.cli import main

pytestmark = pytest.mark.integration

STEP = 5
SPAN = 50 * 60  # within the test bed's Prometheus retention (1h)
SLOW_AT = 35 * 60


def _record(start: float) -> str:
    lines = ["# TYPE lat_seconds histogram"]
    histories = {
        (app, instance): cumulative(seed, SPAN // STEP, SLOW_AT // STEP if app == "slower" else None)
        for seed, (app, instance) in enumerate(
            (app, instance) for app in ("steady", "slower") for instance in ("a", "b")
        )
    }
    for (app, instance), counts in histories.items():
        labels = f'app="{app}",instance="{instance}"'
        for poll, row in enumerate(counts):
            at = start + poll * STEP
            lines += [
                f'lat_seconds_bucket{{{labels},le="{le}"}} {count} {at:.0f}'
                for le, count in zip(BOUNDS, row, strict=True)
            ]
            lines += [
                f"lat_seconds_count{{{labels}}} {row[-1]} {at:.0f}",
                f"lat_seconds_sum{{{labels}}} 0 {at:.0f}",
            ]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, float]]:
    """The config (two latency rules on the recorded server) and the history's first time."""
    tmp_path = tmp_path_factory.mktemp("replay-latency")
    start = float(int(time.time()) // STEP * STEP - SPAN - 300)
    server = prometheus_with_history(tmp_path / "prom", _record(start))
    server.start()
    rules = """      - name: steady
        source: prom
        latency: {histogram: 'lat_seconds{app="steady"}', history: 10m}
        action: rollback
      - name: slower
        source: prom
        latency: {histogram: 'lat_seconds{app="slower"}', history: 10m}
        action: rollback
"""
    config = replay_config(tmp_path / "api.yaml", server.url, rules, defaults="window: 10m")
    try:
        yield config, start
    finally:
        server.stop()


def _replay(config: Path, rule: str, start: float, end: float, *more: str) -> list[str]:
    return replay_argv(config, rule, start, end, "5s", *more)


def test_a_sweep_over_a_steady_histogram_rolls_back_no_deploy(
    history: tuple[Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    config, start = history
    code = main(_replay(config, "steady", start, start + SPAN - STEP))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 deploys, one every 10m, each watched 10m: 0 would have been rolled back" in out, out
    assert "(0.0% of the 4 that could learn)" in out, out
    assert "no_data" not in out, out


def test_a_deploy_before_a_latency_step_would_have_been_rolled_back(
    history: tuple[Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    config, start = history
    end = start + SPAN - STEP
    code = main(_replay(config, "slower", start, end, "--deploy-at", f"{start + SLOW_AT:.0f}"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "-> firing: p99 " in out, out
    assert "would propose a rollback" in out, out
    assert "1 would-be rollbacks" in out, out
    # the reference: both instances' ten minutes before the deploy, summed by le
    firing = next(line for line in out.splitlines() if "-> firing" in line)
    before = int(firing.split(" requests")[0].rsplit(" vs ", 1)[1].replace(",", ""))
    assert 2 * 120 * 80 <= before <= 2 * 120 * 120, firing

    # the same history before the step: a deploy there is not rolled back
    end = start + SLOW_AT - STEP
    code = main(_replay(config, "slower", start, end, "--deploy-at", f"{start + 20 * 60:.0f}"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 would-be rollbacks" in out, out
