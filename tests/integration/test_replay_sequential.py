"""``watchdogd replay`` of a sequential rule over counters recorded in a real Prometheus: deploys swept
over the history, and how many would have been rolled back.

Fifty minutes of bursty, drifting healthy traffic (bench/traffic.py) are written into the server's
storage with ``promtool tsdb create-blocks-from openmetrics``; the error rate steps to 20% at 35m.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from bench.traffic import Traffic
from tests.testbed.prometheus import prometheus_with_history, replay_argv, replay_config
from watchdogd.cli import main

pytestmark = pytest.mark.integration

STEP = 5
SPAN = 50 * 60  # within the test bed's Prometheus retention (1h)
BAD_AT = 35 * 60


def _record(start: float) -> str:
    traffic = Traffic(random.Random(7), low=80, high=120, interval=STEP)
    lines = ["# TYPE req counter"]
    ok = failed = 0
    for i in range(SPAN // STEP):
        offset = i * STEP
        errors, requests = traffic.poll(offset, 0.2 if offset >= BAD_AT else None)
        failed += errors
        ok += requests - errors
        at = start + offset
        lines.append(f'req_total{{code="200"}} {ok} {at:.0f}')
        lines.append(f'req_total{{code="500"}} {failed} {at:.0f}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def test_a_sweep_of_deploys_over_prometheus_history_finds_the_one_bad_deploy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = float(int(time.time()) // STEP * STEP - SPAN - 300)
    server = prometheus_with_history(tmp_path / "prom", _record(start))
    server.start()
    try:
        rules = """      - name: errors
        source: prom
        sequential: {errors: 'req_total{code="500"}', total: req_total, bad: 2%, history: 10m}
        action: rollback
"""
        config = replay_config(tmp_path / "api.yaml", server.url, rules, defaults="window: 10m")
        code = main(replay_argv(config, "errors", start, start + SPAN - STEP, "5s"))
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 deploys, one every 10m, each watched 10m: 1 would have been rolled back" in out, out
    bad_deploy = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 30 * 60))
    assert f"deploy at {bad_deploy}: would roll back 5m" in out, out
    assert " errors in " in out and "probability" in out
