"""Properties of the rule engine over random series: timers, missing data, time, stored state."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdogd.config.models import RuleConfig
from watchdogd.errors import RuleError
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.rules import EvalState, Rule, compile_rule, dump_state, evaluate, load_state, start

FIRING = RuleState.FIRING
NO_DATA = RuleState.NO_DATA

Step = tuple[float, float | None]
"""Seconds since the previous evaluation, and the value (None: missing)."""

PROPERTY = settings(max_examples=250, deadline=None)
PER_KIND = settings(max_examples=60, deadline=None)

# Values around every threshold used below, plus the awkward ones.
VALUES: list[float | None] = [0.0, 0.01, 0.03, 0.05, 0.06, 0.2, 0.5, 0.95, 2.0, math.inf, -math.inf]
VALUES_OR_MISSING: list[float | None] = [*VALUES, math.nan, None]

# Every kind of rule, with the baseline it is started with.
KINDS: list[tuple[dict[str, Any], float | None]] = [
    ({"condition": "> 0.05", "for": "1m"}, None),
    ({"condition": "> 0.05", "for": "0"}, None),
    ({"condition": "> 0.05", "immediate": True}, None),
    ({"condition": "> 0.05", "failures": {"count": 2, "of": 4}}, None),
    ({"condition": "> 0.05", "failures": {"count": 3}}, None),
    ({"condition": "> 0.05", "clear_condition": "< 0.02", "keep_firing_for": "45s"}, None),
    ({"condition": "<", "baseline": {"before": "30m", "tolerance": "10%"}, "for": "30s"}, 1.0),
    ({"condition": ">", "baseline": {"before": "30m", "tolerance": "10%"}}, None),
    ({"pattern": "SystemGate", "absent_for": "2m"}, None),
    ({"pattern": "Error", "condition": ">= 1", "over": "1m", "immediate": True}, None),
]
MISSING_POLICIES: list[dict[str, Any]] = [
    {"condition": "> 0.05", "for": "30s", "on_missing": {"after": "1m", "result": "fail"}},
    {"condition": "> 0.05", "failures": {"count": 2, "of": 3}, "on_missing": {"result": "fail"}},
    {"condition": "> 0.05", "for": "30s", "on_missing": {"after": "30s", "result": "pass"}},
    {"condition": "> 0.05", "on_missing": {"after": "45s", "result": "hold"}},
]
EVERY_KIND = KINDS + [(fields, None) for fields in MISSING_POLICIES]


def make_rule(fields: dict[str, Any]) -> Rule:
    return compile_rule(RuleConfig.model_validate({"name": "r", "source": "s", **fields}))


def sample(now: float, value: float | None) -> Sample:
    return Sample(now, value) if value is not None else Sample.missing(now, "timeout")


def steps(values: list[float | None], min_size: int = 1, max_size: int = 60) -> st.SearchStrategy[list[Step]]:
    gaps = st.sampled_from([1.0, 5.0, 15.0, 15.0, 15.0, 20.0, 45.0, 90.0])
    return st.lists(st.tuples(gaps, st.sampled_from(values)), min_size=min_size, max_size=max_size)


def run(
    rule: Rule, series: list[Step], baseline: float | None = None
) -> list[tuple[float, float | None, EvalState, tuple[Transition, ...]]]:
    """Each evaluation of ``series``: its time, value, the state after it, its transitions."""
    state = start(rule, 0.0, baseline)
    now = 0.0
    out = []
    for gap, value in series:
        now += gap
        state, transitions = evaluate(rule, state, sample(now, value), now)
        out.append((now, value, state, transitions))
    return out


def is_missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


# --- for: D --------------------------------------------------------------------------------------

FOR_VALUES: list[float | None] = [0.01, 0.05, 0.2, math.inf, math.nan, None]


@PROPERTY
@given(series=steps(FOR_VALUES), hold=st.sampled_from([0.0, 15.0, 60.0, 300.0]))
def test_for_fires_exactly_when_true_for_d_since_the_run_started(series: list[Step], hold: float) -> None:
    """A run is broken only by a false evaluation; missing data (hold) does not break it, and
    the time without data does not count toward ``for`` (it pauses the timer)."""
    rule = make_rule({"condition": "> 0.05", "for": f"{hold:g}s" if hold else "0"})
    run_start: float | None = None
    missing_since: float | None = None
    firing = False
    for now, value, state, transitions in run(rule, series):
        if is_missing(value):
            missing_since = now if missing_since is None else missing_since
        else:
            assert value is not None
            if value > 0.05:
                if run_start is None:
                    run_start = now
                elif not firing and missing_since is not None:
                    run_start = min(now, run_start + (now - missing_since))
                firing = firing or now - run_start >= hold
            else:
                run_start = None
                firing = False
            missing_since = None
        for transition in transitions:
            if transition.fired:
                assert run_start is not None
                assert now - run_start >= hold, f"fired at {now}, {now - run_start}s into the run"
                assert not is_missing(value), "fired on missing data"
        assert (state.state is FIRING) == firing


@PROPERTY
@given(
    before=steps([0.2, None], max_size=30),
    after=steps(FOR_VALUES, max_size=40),
    hold=st.sampled_from([15.0, 60.0, 300.0]),
)
def test_one_false_evaluation_resets_the_for_timer(
    before: list[Step], after: list[Step], hold: float
) -> None:
    rule = make_rule({"condition": "> 0.05", "for": f"{hold:g}s"})
    results = run(rule, [*before, (15.0, 0.01), *after])
    false_at = results[len(before)][0]
    assert results[len(before)][2].state is RuleState.OK
    next_run = next((now for now, v, _, _ in results[len(before) + 1 :] if v is not None and v > 0.05), None)
    for now, _, _, transitions in results[len(before) :]:
        if any(t.fired for t in transitions):
            assert next_run is not None
            assert now >= next_run + hold, (false_at, next_run, now)


# --- missing data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "baseline"), KINDS)
@PER_KIND
@given(series=steps([None, math.nan], max_size=80))
def test_only_missing_data_never_fires_nor_reports_ok(
    fields: dict[str, Any], baseline: float | None, series: list[Step]
) -> None:
    for _, _, state, transitions in run(make_rule(fields), series, baseline):
        assert transitions == ()
        assert state.state is NO_DATA


@pytest.mark.parametrize(("fields", "baseline"), KINDS)
@PER_KIND
@given(series=steps(VALUES_OR_MISSING))
def test_hold_never_fires_at_a_missing_sample(
    fields: dict[str, Any], baseline: float | None, series: list[Step]
) -> None:
    for _, value, _, transitions in run(make_rule(fields), series, baseline):
        if is_missing(value):
            assert not any(t.to_state is FIRING for t in transitions)


# --- time ---------------------------------------------------------------------------------------


@PROPERTY
@given(
    kind=st.sampled_from(EVERY_KIND),
    series=steps(VALUES_OR_MISSING),
    other=st.lists(st.sampled_from(VALUES_OR_MISSING), min_size=60, max_size=60),
)
def test_evaluating_again_at_the_same_time_changes_nothing(
    kind: tuple[dict[str, Any], float | None], series: list[Step], other: list[float | None]
) -> None:
    fields, baseline = kind
    rule = make_rule(fields)
    for index, (now, _, state, _) in enumerate(run(rule, series, baseline)):
        again, transitions = evaluate(rule, state, sample(now, other[index]), now)
        assert again == state
        assert transitions == ()


@PROPERTY
@given(
    kind=st.sampled_from(EVERY_KIND),
    series=steps(VALUES_OR_MISSING),
    back=st.floats(min_value=0.001, max_value=100.0),
    value=st.sampled_from(VALUES_OR_MISSING),
)
def test_a_sample_older_than_the_last_is_refused(
    kind: tuple[dict[str, Any], float | None], series: list[Step], back: float, value: float | None
) -> None:
    fields, baseline = kind
    rule = make_rule(fields)
    now, _, state, _ = run(rule, series, baseline)[-1]
    with pytest.raises(RuleError, match="is older than the previous one"):
        evaluate(rule, state, sample(now - back, value), now + 15.0)
    with pytest.raises(RuleError, match="before its previous evaluation"):
        evaluate(rule, state, sample(now - back, value), now - back)


# --- stored state -------------------------------------------------------------------------------


@PROPERTY
@given(kind=st.sampled_from(EVERY_KIND), series=steps(VALUES_OR_MISSING))
def test_dump_and_load_at_every_step_yields_the_same_future(
    kind: tuple[dict[str, Any], float | None], series: list[Step]
) -> None:
    fields, baseline = kind
    rule = make_rule(fields)
    expected = run(rule, series, baseline)
    state = start(rule, 0.0, baseline)
    now = 0.0
    for (gap, value), (_, _, want_state, want_transitions) in zip(series, expected, strict=True):
        state = load_state(json.loads(json.dumps(dump_state(state))))
        now += gap
        state, transitions = evaluate(rule, state, sample(now, value), now)
        assert transitions == want_transitions
        assert state == want_state
