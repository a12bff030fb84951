"""``watchdogd replay --prometheus``: a rule over history recorded in a real Prometheus.

The history is written into the server's storage with ``promtool tsdb
create-blocks-from openmetrics`` before it starts, so the range query reads
recorded data exactly as it would on a production server.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.testbed.prometheus import prometheus_with_history, replay_argv, replay_config
from watchdogd.cli import main

STEP = 15
PATTERN = [  # (minutes, error ratio): two real incidents, one blip shorter than `for`
    (8, 0.01),
    (9, 0.20),  # bad for 9m: fires 5m in
    (6, 0.01),
    (3, 0.30),  # 3m: shorter than for: 5m, no rollback
    (6, 0.01),
    (7, 0.12),  # fires again
    (4, 0.01),
]


def _record(start: float) -> tuple[str, list[float]]:
    lines = ["# TYPE app_error_ratio gauge"]
    fired: list[float] = []
    at = start
    for minutes, value in PATTERN:
        if value > 0.05 and minutes * 60 >= 300:
            fired.append(at + 300)
        for _ in range(minutes * 60 // STEP):
            lines.append(f'app_error_ratio{{job="app"}} {value} {at:.0f}')
            at += STEP
    lines.append("# EOF")
    return "\n".join(lines) + "\n", fired


def test_replay_counts_would_be_rollbacks_over_recorded_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = sum(m for m, _ in PATTERN) * 60
    start = float(int(time.time()) // STEP * STEP - total - 300)
    text, fired = _record(start)
    server = prometheus_with_history(tmp_path / "prom", text)
    server.start()
    try:
        rules = """      - name: error-rate
        source: prom
        query: 'app_error_ratio{job="app"}'
        condition: "> 0.05"
        for: 5m
        action: rollback
"""
        config = replay_config(tmp_path / "api.yaml", server.url, rules)
        code = main(replay_argv(config, "error-rate", start, start + total - STEP, "15s"))
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("would propose a rollback") == 2, out
    assert "2 would-be rollbacks" in out
    # each at the recorded incident's start + for: 5m, printed as an offset from the first point
    for at in fired:
        offset = at - start
        assert f"+{int(offset // 60)}m  pending -> firing" in out, (offset, out)
