"""Decisions: what a firing rule, a clock tick or an operator's vote does to a rollback.

Pure, like the rule engine: given the facts and the time, it says what to do;
the daemon does it (writes the journal, starts the plan, notifies). The states
are the contract's: ``pending`` (veto window) or ``awaiting_approval`` (manual
mode) -> ``executing`` -> ``succeeded`` | ``failed``; ``pending`` -> ``vetoed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["auto", "manual", "dry-run"]
Verdict = Literal["ignore", "notify", "propose", "join"]
Due = Literal["wait", "execute", "expire"]


@dataclass(frozen=True, slots=True)
class Policy:
    """How a service's rollbacks are decided."""

    mode: Mode = "auto"
    grace: float = 60.0
    approval_timeout: float | None = None
    """Manual mode: how long a proposal waits for an answer (None: forever)."""
    on_approval_timeout: Literal["execute", "cancel"] = "cancel"


@dataclass(frozen=True, slots=True)
class Fire:
    """A rule entered firing for a deployment."""

    rule: str
    action: Literal["rollback", "notify"]
    immediate: bool
    at: float
    muted_until: float | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    """What the daemon must write for a new proposal."""

    state: Literal["pending", "awaiting_approval"]
    execute_at: float | None
    """End of the veto window (auto, dry-run); the approval deadline in manual mode."""
    dry_run: bool


def on_fire(policy: Policy, fire: Fire, deployment_open: bool, has_proposal: bool) -> Verdict:
    """What a firing rule does: nothing, a notification, a new proposal, or one more reason."""
    if fire.muted_until is not None and fire.at < fire.muted_until:
        return "ignore"
    if fire.action == "notify":
        return "notify"
    if not deployment_open:
        return "notify"  # promoted or already rolled back: say it, touch nothing
    return "join" if has_proposal else "propose"


def proposal(policy: Policy, fire: Fire) -> Proposal:
    """The new proposal for ``fire``: its state and deadline."""
    grace = 0.0 if fire.immediate else policy.grace
    if policy.mode == "manual":
        deadline = None if policy.approval_timeout is None else fire.at + policy.approval_timeout
        return Proposal("awaiting_approval", deadline, dry_run=False)
    return Proposal("pending", fire.at + grace, dry_run=policy.mode == "dry-run")


def due(policy: Policy, state: str, execute_at: float | None, now: float) -> Due:
    """At ``now``, is a proposal to wait, to execute, or to expire unanswered?"""
    if state == "pending":
        return "execute" if execute_at is not None and now >= execute_at else "wait"
    if state == "awaiting_approval":
        if execute_at is None or now < execute_at:
            return "wait"
        return "execute" if policy.on_approval_timeout == "execute" else "expire"
    return "wait"
