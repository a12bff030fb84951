"""The rule engine, stepped by hand: every semantic, with the time, value and threshold of each transition."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pytest

from watchdogd.config.loader import load_config_text
from watchdogd.config.models import RuleConfig
from watchdogd.errors import RuleError
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.rules import (
    EvalState,
    Rule,
    baseline_mean,
    compile_rule,
    dump_state,
    evaluate,
    fingerprint,
    load_state,
    resume,
    start,
)

OK = RuleState.OK
PENDING = RuleState.PENDING
FIRING = RuleState.FIRING
NO_DATA = RuleState.NO_DATA

Value = float | None


def make_rule(**fields: Any) -> Rule:
    """A rule from config keys as a user writes them (``for``, ``"> 0.05"``, ``"5m"``)."""
    return compile_rule(RuleConfig.model_validate({"name": "r", "source": "s", **fields}))


class Runner:
    """One rule over time: each step gives a sample at ``now`` and keeps every transition."""

    def __init__(self, rule: Rule, started_at: float = 0.0, baseline: float | None = None) -> None:
        self.rule = rule
        self.state = start(rule, started_at, baseline)
        self.transitions: list[Transition] = []

    def step(self, now: float, value: Value, reason: str = "timeout") -> tuple[Transition, ...]:
        sample = Sample(now, value) if value is not None else Sample.missing(now, reason)
        self.state, transitions = evaluate(self.rule, self.state, sample, now)
        self.transitions.extend(transitions)
        return transitions

    def feed(self, values: Sequence[Value], every: float = 15.0, first: float = 0.0) -> list[RuleState]:
        """One value per ``every`` seconds from ``first``; the state after each."""
        states = []
        for index, value in enumerate(values):
            self.step(first + index * every, value)
            states.append(self.state.state)
        return states

    def moves(self) -> list[tuple[float, RuleState, RuleState]]:
        return [(t.at, t.from_state, t.to_state) for t in self.transitions]

    def fired_at(self) -> list[float]:
        return [t.at for t in self.transitions if t.fired]


# --- conditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "value", "fires"),
    [
        ("> 0.05", 0.06, True),
        ("> 0.05", 0.05, False),
        (">= 0.05", 0.05, True),
        (">= 0.05", 0.049, False),
        ("< 1", 0.5, True),
        ("< 1", 1.0, False),
        ("<= 1", 1.0, True),
        ("<= 1", 1.5, False),
        ("== 0", 0.0, True),
        ("== 0", 1.0, False),
        ("!= 1", 0.0, True),
        ("!= 1", 1.0, False),
        ("> 5%", 0.051, True),
        ("> 5%", 0.05, False),
    ],
)
def test_each_operator_decides_on_its_boundary(condition: str, value: float, fires: bool) -> None:
    run = Runner(make_rule(condition=condition))
    transitions = run.step(0.0, value)
    assert run.state.state is (FIRING if fires else OK)
    (transition,) = transitions
    assert transition.value == value
    assert transition.values == (value,)
    assert transition.at == 0.0
    assert transition.threshold == make_rule(condition=condition).condition.threshold


def test_nan_is_no_data_not_a_value() -> None:
    run = Runner(make_rule(condition="!= 1"))
    # NaN != 1 is true in IEEE arithmetic; as no data it must not fire.
    assert run.feed([math.nan, math.nan]) == [NO_DATA, NO_DATA]
    assert run.transitions == []
    run.step(30.0, 1.0)
    assert run.state.state is OK
    (transition,) = run.step(45.0, math.nan)
    assert (transition.from_state, transition.to_state) == (OK, NO_DATA)
    assert transition.value is None
    assert transition.threshold == 1.0
    assert "NaN" in transition.reason


def test_nan_holds_a_pending_rule_and_pauses_its_timer() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "1m"}))
    states = run.feed([0.1, math.nan, math.nan, math.nan, 0.1])
    # still pending, not reset; the 45s without data do not count toward for: 1m
    assert states == [PENDING, PENDING, PENDING, PENDING, PENDING]
    assert run.feed([0.1, 0.1, 0.1], first=75.0) == [PENDING, PENDING, FIRING]
    assert run.fired_at() == [105.0]


def test_positive_infinity_is_a_value_above_every_threshold() -> None:
    run = Runner(make_rule(condition="> 1000000", immediate=True))
    (transition,) = run.step(0.0, math.inf)
    assert transition.to_state is FIRING
    assert transition.value == math.inf
    assert transition.threshold == 1_000_000


def test_negative_infinity_is_below_every_threshold() -> None:
    above = Runner(make_rule(condition="> -1000000"))
    above.step(0.0, -math.inf)
    assert above.state.state is OK
    below = Runner(make_rule(condition="< 0"))
    (transition,) = below.step(0.0, -math.inf)
    assert transition.to_state is FIRING
    assert transition.value == -math.inf


def test_a_rule_without_a_condition_is_refused() -> None:
    with pytest.raises(RuleError, match="needs a condition"):
        make_rule()


def test_a_bare_operator_without_a_baseline_is_refused() -> None:
    with pytest.raises(RuleError, match="needs a number"):
        make_rule(condition=">")


# --- for: Prometheus semantics ----------------------------------------------------------


def test_seed_error_rate_above_5_percent_for_5_consecutive_minutes() -> None:
    """Seed 002: "Automatic rollback if error rate > 5% for 5 consecutive minutes", at 15 s."""
    run = Runner(make_rule(condition="> 5%", action="rollback", **{"for": "5m"}))
    states = run.feed([0.2] * 21)
    assert states[:20] == [PENDING] * 20  # 0s .. 4m45s
    assert states[20] is FIRING  # 5m: true at every evaluation for 5 minutes
    first, fired = run.transitions
    assert (first.at, first.from_state, first.to_state) == (0.0, NO_DATA, PENDING)
    assert (fired.at, fired.from_state, fired.to_state) == (300.0, PENDING, FIRING)
    assert fired.value == 0.2
    assert fired.threshold == 0.05
    assert "5m" in fired.reason


def test_contract_example_fires_at_7m15s() -> None:
    """CONTRACT.md's offline test: ``0.01x8 0.2x30`` at 15 s, ``for: 5m``."""
    run = Runner(make_rule(condition="> 0.05", **{"for": "5m"}))
    states = run.feed([0.01] * 9 + [0.2] * 31)
    at = {index * 15: state for index, state in enumerate(states)}
    assert at[120] is OK
    assert at[135] is PENDING
    assert at[360] is PENDING  # 6m
    assert at[420] is PENDING  # 7m
    assert at[435] is FIRING  # 7m15s = 2m15s + 5m
    assert run.fired_at() == [435.0]


def test_one_false_evaluation_resets_the_for_timer() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "5m"}))
    states = run.feed([0.2] * 20 + [0.04] + [0.2] * 21)  # 4m45s true, a dip at 5m
    assert states[19] is PENDING
    assert states[20] is OK
    assert states[21] is PENDING  # 5m15s: a new run starts
    assert states[40] is PENDING  # 10m: only 4m45s into the new run
    assert states[41] is FIRING  # 10m15s
    assert run.fired_at() == [615.0]
    reset = run.transitions[1]
    assert (reset.at, reset.from_state, reset.to_state) == (300.0, PENDING, OK)
    assert reset.value == 0.04
    assert reset.threshold == 0.05


def test_for_counts_time_not_evaluations() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "5m"}))
    for now in (0.0, 100.0, 299.0):
        run.step(now, 0.2)
        assert run.state.state is PENDING
    run.step(301.0, 0.2)
    assert run.state.state is FIRING
    assert run.fired_at() == [301.0]


def test_for_window_completes_despite_float_rounding() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "300ms"}))
    now = 0.0
    states = []
    for index in range(9):
        run.step(now, 0.2 if index >= 5 else 0.01)
        states.append(run.state.state)
        now += 0.1  # the 5th time is 0.5, the 8th 0.7999999999999999: 0.3 less a hair later
    assert states[5:] == [PENDING, PENDING, PENDING, FIRING]


def test_for_window_completes_on_epoch_times() -> None:
    # Stamps are seconds since the epoch, about 1.8e9, where floats step by 2.4e-7: polls
    # 0.3 s apart from 1_800_000_000.1 hold a `for: 600ms` after two intervals less 1.2e-7.
    first = 1_800_000_000.1
    run = Runner(make_rule(condition="> 0.05", **{"for": "600ms"}), started_at=first)
    states = [run.feed([0.2], first=first + index * 0.3)[0] for index in range(3)]
    assert states == [PENDING, PENDING, FIRING]


def test_for_zero_fires_at_the_first_true_evaluation() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "0"}))
    assert run.feed([0.01, 0.2]) == [OK, FIRING]
    assert run.fired_at() == [15.0]


def test_a_firing_for_rule_clears_at_the_first_false_evaluation() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "30s"}))
    assert run.feed([0.2, 0.2, 0.2, 0.01]) == [PENDING, PENDING, FIRING, OK]
    cleared = run.transitions[-1]
    assert (cleared.at, cleared.from_state, cleared.to_state) == (45.0, FIRING, OK)
    assert cleared.value == 0.01


# --- failures: M of N, and cumulative -------------------------------------------------------


def test_failures_m_of_n_fires_on_the_mth_failure_in_the_last_n() -> None:
    run = Runner(make_rule(condition="> 0.05", failures={"count": 3, "of": 5}))
    states = run.feed([0.2, 0.01, 0.3, 0.01, 0.4])
    assert states == [PENDING, PENDING, PENDING, PENDING, FIRING]
    fired = run.transitions[-1]
    assert fired.at == 60.0
    assert fired.values == (0.2, 0.3, 0.4)  # the failing values, oldest first
    assert fired.value == 0.4
    assert fired.threshold == 0.05
    assert "3 of the last 5" in fired.reason


def test_failures_slide_out_of_the_last_n() -> None:
    run = Runner(make_rule(condition="> 0.05", failures={"count": 3, "of": 5}))
    # Two failures, then five passes push them out; two more are again only two.
    states = run.feed([0.2, 0.2, 0.01, 0.01, 0.01, 0.01, 0.01, 0.2, 0.2])
    assert FIRING not in states
    assert states[6] is OK  # 1m30s: both failures are older than the last 5
    assert states[4] is PENDING  # 1m: the first failure is still the 5th newest
    assert run.transitions[1].at == 90.0
    assert (run.transitions[1].from_state, run.transitions[1].to_state) == (PENDING, OK)


def test_failures_m_of_n_after_firing_goes_back_to_pending_while_failures_remain() -> None:
    run = Runner(make_rule(condition="> 0.05", failures={"count": 2, "of": 3}))
    states = run.feed([0.2, 0.2, 0.01, 0.01, 0.01])
    # 15s and 30s: 2 of the last 3; 45s: 1 of 3, one failure still counted; 1m: none.
    assert states == [PENDING, FIRING, FIRING, PENDING, OK]
    assert run.moves() == [
        (0.0, NO_DATA, PENDING),
        (15.0, PENDING, FIRING),
        (45.0, FIRING, PENDING),
        (60.0, PENDING, OK),
    ]
    back = run.transitions[2]
    assert back.value == 0.01
    assert back.values == (0.2,)


def test_missing_samples_are_not_evaluations_of_the_last_n() -> None:
    run = Runner(make_rule(condition="> 0.05", failures={"count": 2, "of": 3}))
    states = run.feed([0.2, None, None, None, None, 0.2])
    assert states == [PENDING, PENDING, PENDING, PENDING, PENDING, FIRING]
    assert run.transitions[-1].values == (0.2, 0.2)


def test_cumulative_failures_count_since_the_deploy_started() -> None:
    run = Runner(make_rule(condition="> 1", failures={"count": 3}))
    values: list[Value] = [0.0] * 40
    for index in (3, 20, 39):  # three failures, spread over 10 minutes of passes
        values[index] = 5.0
    states = run.feed(values)
    assert states[2] is OK
    assert states[3:39] == [PENDING] * 36
    assert states[39] is FIRING
    fired = run.transitions[-1]
    assert fired.at == 39 * 15.0
    assert fired.values == (5.0, 5.0, 5.0)
    assert "3 failed evaluations since the deploy started" in fired.reason


def test_cumulative_failures_never_clear_once_reached() -> None:
    run = Runner(make_rule(condition="> 1", failures={"count": 2}))
    states = run.feed([5.0, 5.0, 0.0, 0.0, 0.0])
    assert states == [PENDING, FIRING, FIRING, FIRING, FIRING]


# --- immediate ----------------------------------------------------------------------------------


def test_seed_prisma_errors_roll_back_on_one_hit() -> None:
    """Seed 003: "Prisma errors: IMMEDIATE ROLLBACK"; the source counts matches over 1m."""
    rule = make_rule(
        pattern=r"PrismaClient\w*Error", condition=">= 1", over="1m", immediate=True, action="rollback"
    )
    assert rule.over == 60.0
    run = Runner(rule)
    assert run.feed([0, 0, 0, 1]) == [OK, OK, OK, FIRING]
    fired = run.transitions[-1]
    assert (fired.at, fired.value, fired.threshold) == (45.0, 1.0, 1.0)
    assert "immediate" in fired.reason


def test_count_over_window_rule_compares_the_count_it_is_given() -> None:
    run = Runner(make_rule(pattern="ERROR", condition="> 5", over="1m", **{"for": "30s"}))
    states = run.feed([2, 5, 6, 9, 12, 4])
    assert states == [OK, OK, PENDING, PENDING, FIRING, OK]
    fired = run.transitions[-2]
    assert (fired.at, fired.value, fired.threshold) == (60.0, 12.0, 5.0)


# --- keep_firing_for and clear_condition ------------------------------------------------


def test_keep_firing_for_holds_a_cleared_rule_firing() -> None:
    run = Runner(make_rule(condition="> 0.05", keep_firing_for="1m"))
    states = run.feed([0.2, 0.01, 0.01, 0.01, 0.01, 0.01])
    assert states == [FIRING, FIRING, FIRING, FIRING, FIRING, OK]
    cleared = run.transitions[-1]
    assert cleared.at == 75.0  # cleared first at 15s, + 1m
    assert (cleared.from_state, cleared.to_state) == (FIRING, OK)
    assert (cleared.value, cleared.threshold) == (0.01, 0.05)
    assert "kept firing for 1m" in cleared.reason


def test_keep_firing_for_restarts_when_the_condition_holds_again() -> None:
    run = Runner(make_rule(condition="> 0.05", keep_firing_for="1m"))
    states = run.feed([0.2, 0.01, 0.01, 0.2, 0.01, 0.01, 0.01, 0.01, 0.01])
    assert states[:8] == [FIRING] * 8
    assert states[8] is OK  # cleared again at 1m, + 1m
    assert run.fired_at() == [0.0]  # one firing, not two
    assert run.transitions[-1].at == 120.0


def test_clear_condition_gives_hysteresis() -> None:
    """Fires above 5 %, clears only below 2 %."""
    run = Runner(make_rule(condition="> 5%", clear_condition="< 2%"))
    states = run.feed([0.06, 0.03, 0.04, 0.03, 0.019, 0.03, 0.06])
    assert states == [FIRING, FIRING, FIRING, FIRING, OK, OK, FIRING]
    cleared = run.transitions[1]
    assert (cleared.at, cleared.from_state, cleared.to_state) == (60.0, FIRING, OK)
    assert cleared.value == 0.019
    assert cleared.threshold == 0.02  # the clear threshold, not the firing one
    assert "clear condition < 0.02 met" in cleared.reason
    assert run.fired_at() == [0.0, 90.0]


def test_clear_condition_and_keep_firing_for_together() -> None:
    run = Runner(make_rule(condition="> 5%", clear_condition="< 2%", keep_firing_for="30s"))
    states = run.feed([0.06, 0.01, 0.03, 0.01, 0.01, 0.01])
    # 15s cleared, 30s not cleared any more (timer drops), 45s cleared again: ok at 1m15s.
    assert states == [FIRING, FIRING, FIRING, FIRING, FIRING, OK]
    assert run.transitions[-1].at == 75.0
    assert run.transitions[-1].threshold == 0.02


# --- on_missing -----------------------------------------------------------------------------------


ALL_KINDS: list[dict[str, Any]] = [
    {"condition": "> 0.05", "for": "5m"},
    {"condition": "> 0.05"},
    {"condition": "> 0.05", "immediate": True},
    {"condition": "> 0.05", "failures": {"count": 1, "of": 3}},
    {"condition": "> 0.05", "failures": {"count": 1}},
    {"condition": "> 0.05", "clear_condition": "< 0.02", "keep_firing_for": "1m"},
    {"condition": "<", "baseline": {"before": "30m", "tolerance": "10%"}},
    {"pattern": "SystemGate", "absent_for": "1m"},
    {"pattern": "Error", "condition": ">= 1", "over": "1m", "immediate": True},
]


@pytest.mark.parametrize("fields", ALL_KINDS)
def test_missing_data_alone_never_fires_and_is_never_ok(fields: dict[str, Any]) -> None:
    run = Runner(make_rule(**fields), baseline=1.0)
    states = run.feed([None] * 2000)  # more than 8 hours of nothing
    assert set(states) == {NO_DATA}
    assert run.transitions == []
    assert "no data (timeout)" in run.state.reason or run.state.reason == "not evaluated yet"


def test_hold_turns_ok_into_no_data_and_back() -> None:
    run = Runner(make_rule(condition="> 0.05"))
    run.feed([0.01, None, None, 0.01])
    assert run.moves() == [(0.0, NO_DATA, OK), (15.0, OK, NO_DATA), (45.0, NO_DATA, OK)]
    gone = run.transitions[1]
    assert gone.value is None
    assert gone.values == (None,)
    assert gone.threshold == 0.05
    assert gone.reason == "no data (timeout)"


def test_ok_only_on_data_even_inside_the_after_grace() -> None:
    # on_missing.after says when `result` applies; an ok rule without data is no_data at once
    run = Runner(make_rule(condition="> 0.05", on_missing={"after": "1m"}))
    states = run.feed([0.01, None, None, None, None, None, 0.01])
    assert states == [OK, NO_DATA, NO_DATA, NO_DATA, NO_DATA, NO_DATA, OK]
    assert [t.at for t in run.transitions][-2:] == [15.0, 90.0]
    assert run.transitions[-2].to_state is NO_DATA and "no data" in run.transitions[-2].reason


def test_hold_keeps_pending_through_a_gap_and_the_gap_does_not_count() -> None:
    run = Runner(make_rule(condition="> 0.05", **{"for": "5m"}))
    states = run.feed([0.2] + [None] * 19 + [0.2] * 21)
    assert states[:21] == [PENDING] * 21  # the gap neither fires the rule nor breaks the run
    # 15s were observed before the gap; the other 4m45s must be observed after it
    assert run.fired_at() == [585.0]


def test_hold_keeps_a_firing_rule_firing() -> None:
    run = Runner(make_rule(condition="> 0.05"))
    assert run.feed([0.2, None, None, None, 0.01]) == [FIRING, FIRING, FIRING, FIRING, OK]


def test_on_missing_fail_counts_a_long_gap_as_failing() -> None:
    run = Runner(
        make_rule(condition="> 0.05", on_missing={"after": "1m", "result": "fail"}, **{"for": "30s"})
    )
    states = run.feed([0.01, None, None, None, None, None, None, None])
    # Missing from 15s (no data at once); counts as failing from 1m15s; true for 30s at 1m45s.
    assert states == [OK, NO_DATA, NO_DATA, NO_DATA, NO_DATA, PENDING, PENDING, FIRING]
    fired = run.transitions[-1]
    assert fired.at == 105.0
    assert fired.value is None
    assert fired.values == (None,)
    assert fired.threshold == 0.05
    assert "counts as failing" in fired.reason


def test_on_missing_fail_gap_is_measured_from_its_own_start() -> None:
    run = Runner(make_rule(condition="> 0.05", immediate=True, on_missing={"after": "1m", "result": "fail"}))
    # Gaps of 45s with data between them never reach 1m.
    states = run.feed(([None] * 4 + [0.01]) * 10)
    assert FIRING not in states


def test_on_missing_fail_at_once_fires_an_immediate_rule() -> None:
    run = Runner(make_rule(condition="== 0", immediate=True, on_missing={"result": "fail"}))
    (fired,) = run.step(0.0, None, reason="connection refused")
    assert fired.to_state is FIRING
    assert "no data (connection refused)" in fired.reason


def test_on_missing_fail_counts_as_a_failure_of_n() -> None:
    run = Runner(make_rule(condition="> 0.05", failures={"count": 2, "of": 3}, on_missing={"result": "fail"}))
    assert run.feed([0.2, None]) == [PENDING, FIRING]
    assert run.transitions[-1].values == (0.2, None)


def test_on_missing_pass_clears_a_pending_rule_after_the_gap() -> None:
    run = Runner(
        make_rule(condition="> 0.05", on_missing={"after": "30s", "result": "pass"}, **{"for": "1m"})
    )
    states = run.feed([0.2, None, None, None, None, None, 0.2])
    assert states == [PENDING, PENDING, PENDING, NO_DATA, NO_DATA, NO_DATA, PENDING]
    passed = run.transitions[1]
    assert passed.at == 45.0
    assert "counts as passing" in passed.reason
    assert run.fired_at() == []


def test_on_missing_pass_clears_a_firing_rule() -> None:
    run = Runner(make_rule(condition="> 0.05", on_missing={"result": "pass"}))
    assert run.feed([0.2, None]) == [FIRING, NO_DATA]
    assert run.moves()[-1] == (15.0, FIRING, NO_DATA)


# --- baseline -------------------------------------------------------------------------------------


def test_baseline_mean_uses_only_finite_values_before_the_deploy() -> None:
    samples = [
        Sample(100.0, 50.0),  # older than the window
        Sample(1000.0, 1.0),
        Sample(1500.0, 2.0),
        Sample(1600.0, math.nan),
        Sample(1700.0, math.inf),
        Sample.missing(1750.0, "timeout"),
        Sample(1799.0, 3.0),
        Sample(1800.0, 99.0),  # the deploy's own time is after
    ]
    assert baseline_mean(samples, deploy_at=1800.0, before=1800.0 - 900.0) == 2.0
    assert baseline_mean([Sample(10.0, math.nan)], deploy_at=1800.0, before=1800.0) is None
    assert baseline_mean([], deploy_at=1800.0, before=60.0) is None


def test_baseline_threshold_is_the_mean_widened_by_the_tolerance() -> None:
    rule = make_rule(condition=">", baseline={"before": "30m", "tolerance": "10%"}, **{"for": "30s"})
    run = Runner(rule, started_at=1000.0, baseline=0.8)
    assert run.state.threshold == pytest.approx(0.88)
    states = run.feed([0.85, 0.9, 0.95, 1.0], first=1000.0)
    assert states == [OK, PENDING, PENDING, FIRING]
    fired = run.transitions[-1]
    assert fired.at == 1045.0
    assert fired.threshold == pytest.approx(0.88)
    assert fired.value == 1.0
    assert "baseline 0.8 +10%" in fired.reason


def test_baseline_below_is_widened_downwards() -> None:
    run = Runner(make_rule(condition="<", baseline={"before": "30m", "tolerance": "10%"}), baseline=200.0)
    assert run.state.threshold == pytest.approx(180.0)
    assert run.feed([185.0, 179.0]) == [OK, FIRING]
    assert run.transitions[-1].threshold == pytest.approx(180.0)


def test_baseline_of_a_negative_mean_widens_away_from_it() -> None:
    run = Runner(make_rule(condition=">", baseline={"before": "30m", "tolerance": "10%"}), baseline=-10.0)
    assert run.state.threshold == pytest.approx(-9.0)


@pytest.mark.parametrize("baseline", [None, math.nan, math.inf])
def test_without_a_baseline_the_rule_stays_no_data_and_says_why(baseline: float | None) -> None:
    run = Runner(make_rule(condition=">", baseline={"before": "30m", "tolerance": "10%"}), baseline=baseline)
    states = run.feed([1e9, 0.0, None, 1e9])
    assert states == [NO_DATA] * 4
    assert run.transitions == []
    assert run.state.reason == "no baseline: no data in the 30m before the deploy"
    assert run.state.threshold is None
    assert run.state.value == 1e9


# --- log rules: absent_for --------------------------------------------------------------------


def test_seed_no_systemgate_logs_after_one_hour() -> None:
    """Seed 003: "No SystemGate logs after 1 hour" is a silent failure."""
    run = Runner(make_rule(pattern="SystemGate", absent_for="1h"), started_at=0.0)
    states = run.feed([0] * 241)  # 0s .. 1h, every 15s: no match
    assert states[:240] == [OK] * 240
    assert states[240] is FIRING
    fired = run.transitions[-1]
    assert fired.at == 3600.0
    assert fired.value == 3600.0  # seconds of silence
    assert fired.threshold == 3600.0
    assert "since the deploy started" in fired.reason


def test_absent_for_is_reset_by_a_match() -> None:
    run = Runner(make_rule(pattern="SystemGate", absent_for="1h"))
    values = [0.0] * 281
    values[40] = 1.0  # a match at 10m
    states = run.feed(values)
    assert states[240] is OK  # 1h: only 50m since the match
    assert states[279] is OK
    assert states[280] is FIRING  # 1h10m
    fired = run.transitions[-1]
    assert (fired.at, fired.value, fired.threshold) == (4200.0, 3600.0, 3600.0)
    assert "since the last match" in fired.reason


def test_absent_for_clears_at_the_next_match() -> None:
    run = Runner(make_rule(pattern="SystemGate", absent_for="1m"))
    assert run.feed([0, 0, 0, 0, 0, 3]) == [OK, OK, OK, OK, FIRING, OK]
    cleared = run.transitions[-1]
    assert (cleared.at, cleared.from_state, cleared.to_state) == (75.0, FIRING, OK)
    assert cleared.value == 0.0
    assert cleared.reason == "a line matched"


def test_absent_for_holds_while_the_log_source_gives_no_data() -> None:
    run = Runner(make_rule(pattern="SystemGate", absent_for="1m"))
    states = run.feed([0, None, None, None, None, None, None, 0])
    assert states[1:7] == [NO_DATA] * 6
    assert states[7] is FIRING  # data is back and 1m45s have passed without a match
    assert run.transitions[-1].value == 105.0


# --- time ---------------------------------------------------------------------------------------


def test_time_going_backwards_is_refused_with_both_times() -> None:
    run = Runner(make_rule(condition="> 0.05"))
    run.step(20.0, 0.01)
    with pytest.raises(RuleError, match=r"rule 'r': evaluated at 10, before its previous evaluation at 20"):
        run.step(10.0, 0.01)


def test_a_sample_older_than_the_previous_one_is_refused() -> None:
    rule = make_rule(condition="> 0.05")
    state, _ = evaluate(rule, start(rule, 0.0), Sample(20.0, 0.01), 20.0)
    with pytest.raises(RuleError, match="sample at 10 is older than the previous one at 20"):
        evaluate(rule, state, Sample(10.0, 0.2), 30.0)


def test_a_sample_from_the_future_is_refused() -> None:
    rule = make_rule(condition="> 0.05")
    with pytest.raises(RuleError, match="sample at 40 is newer than the evaluation time 30"):
        evaluate(rule, start(rule, 0.0), Sample(40.0, 0.2), 30.0)


def test_the_same_sample_may_be_evaluated_again_later() -> None:
    rule = make_rule(condition="> 0.05", **{"for": "30s"})
    state = start(rule, 0.0)
    sample = Sample(0.0, 0.2)
    for now in (0.0, 15.0, 30.0):
        state, _ = evaluate(rule, state, sample, now)
    assert state.state is FIRING


def test_evaluating_again_at_the_same_time_changes_nothing() -> None:
    rule = make_rule(condition="> 0.05", **{"for": "30s"})
    state, _ = evaluate(rule, start(rule, 0.0), Sample(0.0, 0.2), 0.0)
    again, transitions = evaluate(rule, state, Sample(0.0, 0.01), 0.0)
    assert again == state
    assert transitions == ()


# --- stored state -------------------------------------------------------------------------------


def test_dump_and_load_round_trip_through_json_keeps_the_future() -> None:
    rule = make_rule(condition="> 0.05", failures={"count": 3, "of": 5})
    values: list[Value] = [0.2, 0.01, math.inf, None, 0.01, 0.2, 0.2, 0.01, 0.01, 0.01, 0.01, 0.01]
    whole = Runner(rule)
    whole.feed(values)
    first = Runner(rule)
    first.feed(values[:6])
    restored = Runner(rule)
    restored.state = load_state(json.loads(json.dumps(dump_state(first.state))))
    assert restored.state == first.state
    restored.feed(values[6:], first=6 * 15.0)
    assert first.transitions + restored.transitions == whole.transitions
    assert restored.state == whole.state


def test_a_loaded_for_rule_keeps_its_timer() -> None:
    rule = make_rule(condition="> 0.05", **{"for": "5m"})
    run = Runner(rule)
    run.feed([0.2] * 10)  # pending since 0s
    run.state = load_state(json.loads(json.dumps(dump_state(run.state))))
    run.feed([0.2] * 11, first=150.0)
    assert run.fired_at() == [300.0]


def _good_dump() -> dict[str, Any]:
    rule = make_rule(condition="> 0.05")
    state, _ = evaluate(rule, start(rule, 0.0), Sample(0.0, 0.2), 0.0)
    return dump_state(state)


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (None, "expected a mapping"),
        ("firing", "expected a mapping"),
        ([1, 2], "expected a mapping"),
        ({}, "state, since, reason, started_at, threshold missing"),
        ({**_good_dump(), "state": "exploded"}, "unknown state 'exploded'"),
        ({**_good_dump(), "since": "yesterday"}, "since is 'yesterday', not a number"),
        ({**_good_dump(), "since": math.inf}, "since is inf, not a time"),
        ({**_good_dump(), "reason": 3}, "reason is 3, not a text"),
        ({**_good_dump(), "last_eval": True}, "last_eval is True, not a number"),
        ({**_good_dump(), "threshold": math.nan}, "threshold is nan, not a number"),
        ({**_good_dump(), "failures": "3"}, "failures is '3', not a count"),
        ({**_good_dump(), "failures": -1}, "failures is -1, not a count"),
        ({**_good_dump(), "failed_values": 5}, "failed_values is 5, not a list"),
        ({**_good_dump(), "failed_values": ["x"]}, "failed_values is 'x', not a number"),
    ],
)
def test_load_state_refuses_garbage(garbage: Any, message: str) -> None:
    with pytest.raises(RuleError, match=f"not a stored rule state: {message}"):
        load_state(garbage)


def test_load_state_accepts_what_dump_state_wrote() -> None:
    state = load_state(_good_dump())
    assert isinstance(state, EvalState)
    assert state.state is FIRING
    assert state.value == 0.2


# --- whole configs ---------------------------------------------------------------------------


SEED_CONFIG = """
sources:
  prom: {type: prometheus, url: http://127.0.0.1:9090}
  logs: {type: docker_logs, container: api}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: error-rate
        source: prom
        query: sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))
        condition: "> 5%"
        for: 5m
        action: rollback
      - name: prisma-errors
        source: logs
        pattern: 'PrismaClient\\w*Error'
        condition: ">= 1"
        over: 1m
        immediate: true
        action: rollback
      - name: systemgate-silent
        source: logs
        pattern: SystemGate
        absent_for: 1h
        action: notify
"""


def test_seed_rules_from_a_whole_config_fire_at_their_times() -> None:
    config = load_config_text(SEED_CONFIG, "seed.yaml")
    rules = {r.name: compile_rule(r) for r in config.services["api"].rules}
    # A bad deploy at 0s: errors at 20% from 1m, a Prisma error at 2m, no SystemGate line ever.
    series: dict[str, list[float]] = {
        "error-rate": [0.01] * 4 + [0.2] * 237,
        "prisma-errors": [0.0] * 8 + [1.0] + [0.0] * 232,
        "systemgate-silent": [0.0] * 241,
    }
    fired = {}
    for name, rule in rules.items():
        run = Runner(rule)
        run.feed(series[name])
        fired[name] = (run.fired_at(), rule.action)
    assert fired == {
        "error-rate": ([360.0], "rollback"),
        "prisma-errors": ([120.0], "rollback"),
        "systemgate-silent": ([3600.0], "notify"),
    }


# --- what a restart, a reload and a clock do to a stored state ---------------------------------------


def test_a_baseline_rule_without_a_baseline_never_fires_whatever_on_missing_says() -> None:
    rule = make_rule(
        condition=">",
        baseline={"before": "30m", "tolerance": "10%"},
        on_missing={"after": "0s", "result": "fail"},
        immediate=True,
    )
    run = Runner(rule, baseline=None)
    states = run.feed([None, None, 5.0, None, None])
    assert states == [NO_DATA] * 5
    assert run.transitions == []
    assert "no baseline" in run.state.reason


def test_time_nobody_evaluated_is_a_gap_not_evidence() -> None:
    rule = make_rule(condition="> 0.05", **{"for": "5m"})
    run = Runner(rule)
    run.feed([0.2, 0.2, 0.2], every=15.0)  # pending for 30s
    assert run.state.state is PENDING
    # watchdogd down for 10 minutes: the stored state is carried over to the restart
    run.state = resume(run.state, 630.0)
    run.step(630.0, 0.2)
    assert run.state.state is PENDING  # 30s observed, not 10m30s
    run.step(899.0, 0.2)
    assert run.state.state is PENDING
    run.step(900.0, 0.2)
    assert run.state.state is FIRING  # 5m of observed failing time


def test_a_stored_state_ahead_of_the_clock_is_evaluated_on_not_refused() -> None:
    rule = make_rule(condition="> 0.05", **{"for": "1m"})
    run = Runner(rule, started_at=1_000.0)
    run.feed([0.2, 0.2], every=15.0, first=1_000.0)  # pending, observed 15s
    # the process that saved it had a clock 1h ahead of this one
    run.state = resume(run.state, 1_015.0 - 3600.0)
    run.step(1_015.0 - 3600.0 + 15.0, 0.2)
    assert run.state.state is PENDING
    run.step(1_015.0 - 3600.0 + 45.0, 0.2)
    assert run.state.state is FIRING  # 15s + 45s observed


def test_absence_does_not_count_the_downtime() -> None:
    rule = make_rule(pattern="SystemGate", absent_for="10m")
    run = Runner(rule)
    run.feed([1.0, 0.0], every=60.0)  # a match at 0s, silent at 1m
    run.state = resume(run.state, 3600.0)  # down for almost an hour
    run.step(3600.0, 0.0)
    assert run.state.state is OK  # 1m of observed silence, not 1h


def test_a_rule_fingerprint_follows_its_meaning_not_its_words() -> None:
    base = {"name": "r", "source": "s", "condition": "> 0.05", "for": "5m", "action": "rollback"}

    def of(**changes: Any) -> str:
        return fingerprint(RuleConfig.model_validate({**base, **changes}))

    assert of() == of(description="the error rate", severity="warning") == of(action="notify")
    assert of() != of(condition="> 0.5")
    assert of() != of(**{"for": "10m"})
    assert of(failures={"count": 4, "of": 5}, **{"for": "0s"}) != of(failures={"count": 5}, **{"for": "0s"})
