"""``baseline: {..., min: X}``: an absolute floor below which a relative rule cannot fire."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import FILE, load
from tests.unit.test_rules import Runner, make_rule
from watchdogd.config import load_config_text
from watchdogd.model import RuleState
from watchdogd.rules import fingerprint

FIRING = RuleState.FIRING
OK = RuleState.OK

TWICE = {"before": "30m", "tolerance": "100%"}


def test_without_a_floor_a_zero_baseline_fires_on_a_speck() -> None:
    run = Runner(make_rule(condition=">", baseline=TWICE), baseline=0.0)
    assert run.feed([0.0001]) == [FIRING]


def test_a_floor_keeps_a_zero_baseline_rule_from_firing_below_it() -> None:
    run = Runner(make_rule(condition=">", baseline={**TWICE, "min": 0.01}), baseline=0.0)
    assert run.feed([0.0001, 0.005, 0.01, 0.02]) == [OK, OK, OK, FIRING]
    fired = run.transitions[-1]
    assert fired.threshold == 0.01
    assert "floor 0.01" in fired.reason


def test_a_floor_under_the_baseline_changes_nothing() -> None:
    run = Runner(make_rule(condition=">", baseline={**TWICE, "min": 0.01}), baseline=0.5)
    assert run.feed([0.9, 1.01]) == [OK, FIRING]
    assert run.transitions[-1].threshold == 1.0


def test_a_floor_with_a_percent_and_ge(tmp_path: Path) -> None:
    run = Runner(make_rule(condition=">=", baseline={**TWICE, "min": "1%"}), baseline=0.0)
    assert run.feed([0.009, 0.01]) == [OK, FIRING]


@pytest.mark.parametrize("op", ["<", "<="])
def test_a_floor_on_a_rule_that_fires_below_the_baseline_is_refused(op: str, tmp_path: Path) -> None:
    text = f"""\
sources:
  prom: {{type: prometheus, url: http://127.0.0.1:9090}}
services:
  api:
    container: api
    rules:
      - name: throughput
        source: prom
        query: up
        condition: "{op}"
        baseline: {{before: 30m, tolerance: 10%, min: 5}}
"""
    problems = load(text, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{FILE}:11: services.api.rules[0].baseline.min")
    assert "above the baseline" in problems[0]


def test_a_floor_changes_the_fingerprint_and_none_keeps_the_old_one(tmp_path: Path) -> None:
    def rule(baseline: str) -> str:
        text = f"""\
sources:
  prom: {{type: prometheus, url: http://127.0.0.1:9090}}
services:
  api:
    container: api
    rules:
      - {{name: r, source: prom, query: up, condition: ">", baseline: {baseline}}}
"""
        return fingerprint(load_config_text(text, FILE, tmp_path).services["api"].rules[0])

    plain = rule("{before: 30m}")
    assert plain == "ebd73dc6f9f534b0"  # as before floors existed: stored states stay valid
    assert rule("{before: 30m, min: 0.01}") != plain
