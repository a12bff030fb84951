"""Missing data, one model: what a missing sample counts as, and what it does to each timer.

Each evaluation vouches for the time until the next one: after a failing
evaluation that time counts toward ``for``, after a passing one the run is
broken, after a held one (``hold``, or the first ``after`` of a gap) it counts
toward nothing. ``on_missing: fail`` makes a missing sample a failing
evaluation in every respect. The table is in docs/rules.md.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_rules import Runner, make_rule
from watchdogd.model import RuleState

FIRING = RuleState.FIRING
Series = list[tuple[float, float | None]]

PROPERTY = settings(max_examples=200, deadline=None)


def fired(fields: dict[str, Any], values: list[float | None]) -> list[float]:
    runner = Runner(make_rule(condition="> 0.05", **fields))
    runner.feed(values)
    return runner.fired_at()


FOR_1M_FAIL = {"for": "1m", "on_missing": {"result": "fail"}}


def test_fail_a_gap_between_failing_values_counts_as_failing() -> None:
    # 0.2 _ _ 0.2 ... fires when 0.2 _ _ _ _ does: the gap was counted as failing, it is not paused
    assert fired(FOR_1M_FAIL, [0.2, None, None, None, None]) == [60.0]
    assert fired(FOR_1M_FAIL, [0.2, None, None, 0.2, 0.2, 0.2, 0.2]) == [60.0]


def test_fail_a_source_missing_every_other_poll_fires_at_its_for() -> None:
    assert fired(FOR_1M_FAIL, [0.2, None] * 6) == [60.0]


def test_fail_a_run_started_by_missing_samples_goes_on_when_data_returns() -> None:
    assert fired(FOR_1M_FAIL, [None, None, 0.2, 0.2, 0.2, 0.2, 0.2]) == [60.0]


def test_fail_after_the_held_start_of_a_gap_does_not_count_toward_for() -> None:
    # after: 30s: the missing samples at 15s and 30s are held (no evidence either way);
    # from 45s on they fail. Counted: 0s-15s, then 45s onwards: 1m at 1m30s.
    rule = {"for": "1m", "on_missing": {"after": "30s", "result": "fail"}}
    assert fired(rule, [0.2, None, None, None, None, None, None, None]) == [90.0]


def test_hold_a_gap_does_not_count_toward_keep_firing_for() -> None:
    runner = Runner(make_rule(condition="> 0.05", keep_firing_for="30s"))
    states = runner.feed([0.2, 0.01, None, None, 0.01, 0.01, 0.01])
    # clear since 15s; 15s-30s observed; 30s-60s held; 60s-75s observed: 30s at 75s
    assert states == [FIRING, FIRING, FIRING, FIRING, FIRING, RuleState.OK, RuleState.OK]


def test_pass_a_missing_sample_counts_toward_keep_firing_for() -> None:
    runner = Runner(make_rule(condition="> 0.05", keep_firing_for="30s", on_missing={"result": "pass"}))
    states = runner.feed([0.2, None, None, None])
    assert states == [FIRING, FIRING, FIRING, RuleState.NO_DATA]


# --- properties -----------------------------------------------------------------------------------

VALUES: list[float | None] = [0.01, 0.05, 0.2, math.inf, None]
KINDS: list[dict[str, Any]] = [
    {"for": "1m"},
    {"for": "45s"},
    {"for": "0"},
    {"immediate": True},
    {"failures": {"count": 3, "of": 5}},
    {"failures": {"count": 2}},
    {"for": "30s", "keep_firing_for": "30s"},
]


def series_of(values: list[float | None]) -> st.SearchStrategy[Series]:
    gaps = st.sampled_from([5.0, 15.0, 15.0, 15.0, 20.0, 45.0])
    return st.lists(st.tuples(gaps, st.sampled_from(values)), min_size=1, max_size=40)


def first_fire(fields: dict[str, Any], series: Series) -> float:
    """When the rule first fires over ``series`` (infinity: never)."""
    runner = Runner(make_rule(condition="> 0.05", **fields))
    now = 0.0
    for gap, value in series:
        now += gap
        runner.step(now, value)
        if runner.fired_at():
            return now
    return math.inf


def with_missing(fields: dict[str, Any], on_missing: dict[str, str]) -> dict[str, Any]:
    return {**fields, "on_missing": on_missing}


def removed(series: Series) -> Series:
    """The same series with its missing samples taken out (their time added to the next sample)."""
    out: Series = []
    carried = 0.0
    for gap, value in series:
        if value is None:
            carried += gap
        else:
            out.append((gap + carried, value))
            carried = 0.0
    return out


@PROPERTY
@given(kind=st.sampled_from(KINDS), series=series_of(VALUES))
def test_fail_never_fires_later_than_the_gaps_filled_with_failing_values(
    kind: dict[str, Any], series: Series
) -> None:
    filled: Series = [(gap, 0.2 if value is None else value) for gap, value in series]
    gapped = first_fire(with_missing(kind, {"result": "fail"}), series)
    assert gapped <= first_fire(kind, filled)


@PROPERTY
@given(kind=st.sampled_from(KINDS), series=series_of(VALUES))
def test_hold_never_fires_earlier_than_the_gaps_removed(kind: dict[str, Any], series: Series) -> None:
    without = removed(series)
    if not without:
        assert first_fire(kind, series) == math.inf
        return
    # the series without gaps ends where the last value is; compare up to there
    assert first_fire(kind, series) >= first_fire(kind, without)


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    series=series_of(VALUES),
    after=st.sampled_from(["0s", "15s", "30s", "1m"]),
)
def test_fail_never_later_than_hold_and_pass_never_earlier(
    kind: dict[str, Any], series: Series, after: str
) -> None:
    hold = first_fire(with_missing(kind, {"after": after, "result": "hold"}), series)
    assert first_fire(with_missing(kind, {"after": after, "result": "fail"}), series) <= hold
    assert first_fire(with_missing(kind, {"after": after, "result": "pass"}), series) >= hold


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    series=series_of(VALUES),
    after=st.sampled_from(["15s", "30s", "1m"]),
)
def test_the_held_start_of_a_gap_is_never_evidence(kind: dict[str, Any], series: Series, after: str) -> None:
    """With ``after``, ``fail`` fires no earlier than the same series where the held samples
    (those before the gap is ``after`` long) are held under every policy: i.e. than ``hold``
    for them and ``fail`` for the rest, which is what it is."""
    fail = first_fire(with_missing(kind, {"after": after, "result": "fail"}), series)
    assert fail >= first_fire(with_missing(kind, {"result": "fail"}), series)
