"""Decisions: what a firing rule, the clock and an operator's vote do to a rollback, by mode."""

from __future__ import annotations

import math

import pytest

from watchdogd.decisions import (
    Fire,
    Policy,
    Verdict,
    due,
    first_proposal,
    guard,
    on_fire,
    proposal,
    veto_mutes,
    window_end,
)
from watchdogd.model import DeploymentState, RollbackState

WATCHING = DeploymentState.WATCHING


def fire(
    action: str = "rollback",
    immediate: bool = False,
    at: float = 100.0,
    muted: float | None = None,
    entered: bool = True,
) -> Fire:
    return Fire("error-rate", action, immediate, at, muted, entered)  # type: ignore[arg-type]


def test_a_rollback_rule_proposes_and_a_second_joins() -> None:
    assert on_fire(fire(), WATCHING, None) is Verdict.PROPOSE
    assert on_fire(fire(), WATCHING, frozenset({"p99"})) is Verdict.JOIN


def test_a_rule_already_in_the_open_proposal_adds_nothing() -> None:
    assert on_fire(fire(entered=False), WATCHING, frozenset({"error-rate"})) is Verdict.NOTHING


def test_notify_rules_only_notify_once() -> None:
    assert on_fire(fire("notify"), WATCHING, None) is Verdict.NOTIFY
    assert on_fire(fire("notify", entered=False), WATCHING, None) is Verdict.NOTHING


@pytest.mark.parametrize(
    "state", [DeploymentState.PROMOTED, DeploymentState.SUPERSEDED, DeploymentState.ROLLING_BACK]
)
def test_a_deployment_not_watched_is_never_touched(state: DeploymentState) -> None:
    assert on_fire(fire(), state, None) is Verdict.NOTIFY


def test_a_muted_rule_is_recorded_once_and_proposes_when_the_mute_ends() -> None:
    assert on_fire(fire(at=100.0, muted=160.0), WATCHING, None) is Verdict.MUTED
    assert on_fire(fire(at=130.0, muted=160.0, entered=False), WATCHING, None) is Verdict.NOTHING
    # still firing when the mute ends: it proposes again, without a new transition
    assert on_fire(fire(at=160.0, muted=160.0, entered=False), WATCHING, None) is Verdict.PROPOSE


def test_a_veto_mutes_for_its_time_or_until_each_rule_clears() -> None:
    assert veto_mutes(["a", "b"], 1800.0, 100.0) == {"a": 1900.0, "b": 1900.0}
    assert veto_mutes(["a"], None, 100.0) == {"a": math.inf}


def test_auto_waits_out_the_grace_and_immediate_does_not() -> None:
    made = proposal(Policy(grace=60.0), 100.0)
    assert (made.state, made.execute_at, made.dry_run) == ("pending", 160.0, False)
    assert proposal(Policy(grace=60.0), 100.0, immediate=True).execute_at == 100.0
    assert due(Policy(), RollbackState.PENDING, 160.0, 159.9) == "wait"
    assert due(Policy(), RollbackState.PENDING, 160.0, 160.0) == "execute"


def test_dry_run_proposes_the_same_way_but_marks_it() -> None:
    made = proposal(Policy(mode="dry-run", grace=5.0), 10.0)
    assert (made.state, made.execute_at, made.dry_run) == ("pending", 15.0, True)


@pytest.mark.parametrize(
    ("timeout", "then", "at", "expected"),
    [
        (None, "cancel", 10_000.0, "wait"),  # no deadline: waits for an operator forever
        (300.0, "cancel", 399.0, "wait"),
        (300.0, "cancel", 400.0, "expire"),
        (300.0, "execute", 400.0, "execute"),
    ],
)
def test_manual_mode_awaits_approval_and_its_timeout_decides(
    timeout: float | None, then: str, at: float, expected: str
) -> None:
    policy = Policy(mode="manual", approval_timeout=timeout, on_approval_timeout=then)  # type: ignore[arg-type]
    made = proposal(policy, 100.0)
    assert made.state == "awaiting_approval"
    assert made.execute_at == (None if timeout is None else 100.0 + timeout)
    assert due(policy, made.state, made.execute_at, at) == expected


def test_decided_proposals_are_left_alone() -> None:
    for state in ("executing", "succeeded", "failed", "vetoed", "dry_run", "cancelled"):
        assert due(Policy(), RollbackState(state), 0.0, 1e12) == "wait"


@pytest.mark.parametrize(
    ("vote", "state", "outcome"),
    [
        ("veto", "pending", "apply"),
        ("veto", "awaiting_approval", "apply"),
        ("veto", "vetoed", "noop"),
        ("veto", "executing", "refuse"),
        ("veto", "cancelled", "refuse"),
        ("approve", "pending", "apply"),
        ("approve", "executing", "noop"),
        ("approve", "failed", "refuse"),
        ("approve", "cancelled", "refuse"),
        ("retry", "failed", "apply"),
        ("retry", "executing", "noop"),
        ("retry", "succeeded", "refuse"),
        ("retry", "pending", "refuse"),
        ("ack", "pending", "apply"),
        ("ack", "succeeded", "apply"),
    ],
)
def test_votes_are_guarded_by_the_rollback_state(vote: str, state: str, outcome: str) -> None:
    assert guard(vote, RollbackState(state)).outcome == outcome  # type: ignore[arg-type]


def test_the_window_end_waits_for_an_open_proposal_and_never_promotes_a_blind_deploy() -> None:
    assert window_end(WATCHING, 100.0, 99.0, None, []) == "wait"
    assert window_end(WATCHING, 100.0, 100.0, None, []) == "promote"
    assert window_end(WATCHING, 100.0, 100.0, RollbackState.PENDING, []) == "wait"
    assert window_end(WATCHING, 100.0, 100.0, RollbackState.EXECUTING, []) == "wait"
    assert window_end(WATCHING, 100.0, 100.0, RollbackState.VETOED, []) == "promote"
    assert window_end(WATCHING, 100.0, 100.0, None, ["error-rate"]) == "unverified"
    assert window_end(DeploymentState.ROLLED_BACK, 100.0, 200.0, None, []) == "wait"


def test_the_first_proposal_is_the_earliest_firing() -> None:
    fired = {"p99": [130.0], "error-rate": [100.0, 200.0], "quiet": []}
    assert first_proposal(fired) == (100.0, "error-rate")
    assert first_proposal({"quiet": []}) is None
