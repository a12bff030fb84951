"""Decisions: what a firing rule and the clock do to a rollback, by mode."""

from __future__ import annotations

import pytest

from watchdogd.decisions import Fire, Policy, due, on_fire, proposal


def fire(
    action: str = "rollback", immediate: bool = False, at: float = 100.0, muted: float | None = None
) -> Fire:
    return Fire("error-rate", action, immediate, at, muted)  # type: ignore[arg-type]


def test_a_rollback_rule_proposes_and_a_second_joins() -> None:
    assert on_fire(Policy(), fire(), deployment_open=True, has_proposal=False) == "propose"
    assert on_fire(Policy(), fire(), deployment_open=True, has_proposal=True) == "join"


def test_notify_rules_only_notify() -> None:
    assert on_fire(Policy(), fire("notify"), deployment_open=True, has_proposal=False) == "notify"


def test_a_closed_deployment_is_never_touched() -> None:
    assert on_fire(Policy(), fire(), deployment_open=False, has_proposal=False) == "notify"


def test_a_muted_rule_is_ignored_until_the_mute_ends() -> None:
    assert on_fire(Policy(), fire(at=100.0, muted=160.0), True, False) == "ignore"
    assert on_fire(Policy(), fire(at=160.0, muted=160.0), True, False) == "propose"


def test_auto_waits_out_the_grace_and_immediate_does_not() -> None:
    made = proposal(Policy(grace=60.0), fire(at=100.0))
    assert (made.state, made.execute_at, made.dry_run) == ("pending", 160.0, False)
    assert proposal(Policy(grace=60.0), fire(immediate=True, at=100.0)).execute_at == 100.0
    assert due(Policy(), "pending", 160.0, 159.9) == "wait"
    assert due(Policy(), "pending", 160.0, 160.0) == "execute"


def test_dry_run_proposes_the_same_way_but_marks_it() -> None:
    made = proposal(Policy(mode="dry-run", grace=5.0), fire(at=10.0))
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
    made = proposal(policy, fire(at=100.0))
    assert made.state == "awaiting_approval"
    assert made.execute_at == (None if timeout is None else 100.0 + timeout)
    assert due(policy, made.state, made.execute_at, at) == expected


def test_decided_proposals_are_left_alone() -> None:
    for state in ("executing", "succeeded", "failed", "vetoed", "dry_run"):
        assert due(Policy(), state, 0.0, 1e12) == "wait"
