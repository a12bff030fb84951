"""Decisions: what a firing rule, a clock tick or an operator's vote does to a rollback.

Pure, like the rule engine: given the facts and the time, it says what to do;
``watchdogd.watch`` does it (writes the journal, starts the plan, notifies).
The daemon, ``test-rules`` and ``replay`` all decide through these functions.

A deployment has at most one open proposal: every rollback rule firing while
it is open joins it as one more reason, and its veto window is the shortest of
theirs. A veto ends that proposal and mutes its rules (for ``mute_for``, or
until each rule clears); a rule still firing when its mute ends, or one the
veto did not cover, proposes again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from watchdogd.config.models import Config, ServiceConfig
from watchdogd.model import DeploymentState, RollbackRecord, RollbackState

Mode = Literal["auto", "manual", "dry-run"]
Due = Literal["wait", "execute", "expire"]
UNTIL_CLEAR = math.inf
"""A mute with no end of its own: it ends when the rule leaves firing."""


@dataclass(frozen=True, slots=True)
class Policy:
    """How a service's rollbacks are decided."""

    mode: Mode = "auto"
    grace: float = 60.0
    approval_timeout: float | None = None
    """Manual mode: how long a proposal waits for an answer (None: forever)."""
    on_approval_timeout: Literal["execute", "cancel"] = "cancel"


def policy_for(
    config: Config, service: str, sql_policy: str | None = None, backup_id: str | None = None
) -> Policy:
    """The service's policy, defaults resolved; ``auto`` becomes manual when the plan needs approval:
    down SQL that needs it, or a ``restore`` of the deployment's backup (``rollback.restore.approve``)."""
    svc, defaults = config.services[service], config.defaults
    mode = svc.mode or defaults.mode
    restores = backup_id is not None and "restore" in svc.plan() and svc.rollback.restore.approve
    if (sql_policy == "approve" or restores) and mode == "auto":
        mode = "manual"
    return Policy(
        mode=mode,
        grace=svc.grace if svc.grace is not None else defaults.grace,
        approval_timeout=svc.approval_timeout or defaults.approval_timeout,
        on_approval_timeout=svc.on_approval_timeout or defaults.on_approval_timeout,
    )


def plan_steps(service: ServiceConfig, sql_policy: str | None) -> tuple[str, ...]:
    """The steps a rollback runs: the service's order, less ``sql`` when its policy refuses it."""
    steps = service.plan()
    if sql_policy == "refuse":
        return tuple(s for s in steps if s != "sql")
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class Fire:
    """A rule that is firing for a deployment, at one evaluation."""

    rule: str
    action: Literal["rollback", "notify"]
    immediate: bool
    at: float
    muted_until: float | None = None
    entered: bool = True
    """This evaluation entered firing (False: it was firing already)."""

    @property
    def muted(self) -> bool:
        return self.muted_until is not None and self.at < self.muted_until


class Verdict(StrEnum):
    NOTHING = "nothing"
    MUTED = "muted"
    """Muted by a veto: recorded once, when it enters firing."""
    NOTIFY = "notify"
    PROPOSE = "propose"
    JOIN = "join"
    """Add this rule's reason to the open proposal."""


def on_fire(fire: Fire, deployment: DeploymentState, open_rules: frozenset[str] | None) -> Verdict:
    """What a firing rule does; ``open_rules`` are the rules of the open proposal (None: none open).

    Asked at every evaluation while the rule fires, not only when it enters
    firing: that is how a rule whose mute ends while it still fires proposes again.
    """
    if fire.action == "notify" or deployment is not DeploymentState.WATCHING:
        # promoted, superseded or already rolling back: say it, touch nothing
        return Verdict.NOTIFY if fire.entered else Verdict.NOTHING
    if open_rules is not None and fire.rule in open_rules:
        return Verdict.NOTHING
    if fire.muted:
        return Verdict.MUTED if fire.entered else Verdict.NOTHING
    return Verdict.JOIN if open_rules is not None else Verdict.PROPOSE


@dataclass(frozen=True, slots=True)
class Proposal:
    """What must be written for a new proposal, or asked of the open one when joining it."""

    state: Literal[RollbackState.PENDING, RollbackState.AWAITING_APPROVAL]
    execute_at: float | None
    """End of the veto window (auto, dry-run); the approval deadline in manual mode."""
    dry_run: bool


def proposal(policy: Policy, at: float, immediate: bool = False) -> Proposal:
    """A proposal made at ``at``: by a rule (``immediate`` ones have no veto window) or an operator.

    Joining an open proposal asks for this ``execute_at`` too; the store keeps
    the earlier of the two, so the proposal's grace is the shortest of its rules'.
    """
    if policy.mode == "manual":
        deadline = None if policy.approval_timeout is None else at + policy.approval_timeout
        return Proposal(RollbackState.AWAITING_APPROVAL, deadline, dry_run=False)
    grace = 0.0 if immediate else policy.grace
    return Proposal(RollbackState.PENDING, at + grace, dry_run=policy.mode == "dry-run")


def first_proposal(fired: Mapping[str, Sequence[float]]) -> tuple[float, str] | None:
    """When a deployment's rollback is first proposed, and by which rule: the earliest to fire.

    ``fired`` holds each rollback rule's firing times; the rules firing later
    join that proposal as reasons (``on_fire``) instead of making a second one.
    """
    firsts = [(times[0], rule) for rule, times in fired.items() if times]
    return min(firsts) if firsts else None


def due(policy: Policy, state: RollbackState, execute_at: float | None, now: float) -> Due:
    """At ``now``, is a proposal to wait, to execute, or to expire unanswered?"""
    state = RollbackState(state)
    if state is RollbackState.PENDING:
        return "execute" if execute_at is not None and now >= execute_at else "wait"
    if state is RollbackState.AWAITING_APPROVAL:
        if execute_at is None or now < execute_at:
            return "wait"
        return "execute" if policy.on_approval_timeout == "execute" else "expire"
    return "wait"


Vote = Literal["veto", "approve", "ack", "retry"]


@dataclass(frozen=True, slots=True)
class Guard:
    """An operator's vote on a rollback in some state: apply it, answer as is, or refuse (409)."""

    outcome: Literal["apply", "noop", "refuse"]
    why: str = ""


def guard(vote: Vote, state: RollbackState, dry_run: bool = False) -> Guard:
    """Whether ``vote`` may change a rollback that is in ``state``."""
    if vote == "ack":
        return Guard("apply")  # it changes nothing; who saw it, when, is worth the audit line
    if vote == "veto":
        if state.proposed:
            return Guard("apply")
        if state is RollbackState.VETOED:
            return Guard("noop")
        return Guard("refuse", f"is {state}: too late to veto")
    if vote == "approve":
        if state.proposed:
            return Guard("apply")
        if state in (RollbackState.EXECUTING, RollbackState.SUCCEEDED):
            return Guard("noop")  # approving what already runs changes nothing
        if state is RollbackState.FAILED:
            return Guard("refuse", "has failed: retry it instead")
        return Guard("refuse", f"is {state}: it cannot be approved")
    if state is RollbackState.FAILED and not dry_run:
        return Guard("apply")
    if state is RollbackState.EXECUTING:
        return Guard("noop")
    return Guard("refuse", f"is {state}: only a failed rollback can be retried")


def veto_mutes(rules: Iterable[str], mute_for: float | None, now: float) -> dict[str, float]:
    """Until when each rule of a vetoed proposal stays muted: ``mute_for``, or until it clears."""
    until = now + mute_for if mute_for else UNTIL_CLEAR
    return dict.fromkeys(rules, until)


WindowEnd = Literal["wait", "promote", "unverified"]


def window_end(
    state: DeploymentState,
    window_ends_at: float,
    now: float,
    rollback: RollbackState | None,
    blind_rules: Sequence[str],
) -> WindowEnd:
    """At ``now``, what the end of a deployment's window does.

    A proposal still open or executing holds the deployment (its outcome
    decides). ``blind_rules`` are the rollback rules that had no data: the
    deploy was not verified by them, so it ends ``unverified``, never promoted
    silently.
    """
    if state is not DeploymentState.WATCHING or now < window_ends_at:
        return "wait"
    if rollback is not None and (rollback.proposed or rollback is RollbackState.EXECUTING):
        return "wait"
    return "unverified" if blind_rules else "promote"


def may_register(open_state: DeploymentState | None) -> str | None:
    """Why a new deployment of a service cannot be registered now (None: it can)."""
    if open_state is DeploymentState.ROLLING_BACK:
        return "a rollback of the service is executing: register the deploy once it has finished"
    return None


def may_rehearse(plan: Sequence[str], sql_policy: str | None) -> str | None:
    """Why the down SQL of a deployment may not be rehearsed (None: it may).

    A rehearsal runs the SQL the sql step would run: not when the service's
    plan has no sql step, nor when the assessment refuses that SQL.
    """
    if "sql" not in plan:
        return "the service's rollback has no sql step: its SQL is never run, nor rehearsed"
    if sql_policy == "refuse":
        return "the assessment refuses this down SQL (database.destructive or a problem): it is not rehearsed"
    return None


# --- service groups: one proposal, one decision, member plans in order ------------------------

GROUP_STEP_SEPARATOR = "/"
"""A group plan's step is ``SERVICE/STEP``: a service name cannot hold it, a step name can hold ``:``."""


def group_policy(policies: Sequence[Policy]) -> Policy:
    """One decision for a group, as careful as its most careful member.

    Dry run when any member is in dry run (a group rolls back whole or not at
    all, and a member whose operators asked that nothing be touched is not
    touched); otherwise manual when any member needs approval; the longest
    grace (each member's operators keep at least their own veto window); the
    shortest approval timeout, ``cancel`` when any member cancels unanswered.
    """
    modes = {p.mode for p in policies}
    mode: Mode = "dry-run" if "dry-run" in modes else "manual" if "manual" in modes else "auto"
    timeouts = [p.approval_timeout for p in policies if p.approval_timeout is not None]
    cancels = any(p.on_approval_timeout == "cancel" for p in policies)
    return Policy(
        mode=mode,
        grace=max((p.grace for p in policies), default=Policy().grace),
        approval_timeout=min(timeouts) if timeouts else None,
        on_approval_timeout="cancel" if cancels or not policies else "execute",
    )


def group_steps(plans: Sequence[tuple[str, Sequence[str]]]) -> tuple[str, ...]:
    """The group's plan: each member's own steps, member after member, in the group's order."""
    return tuple(f"{service}{GROUP_STEP_SEPARATOR}{step}" for service, steps in plans for step in steps)


def split_step(name: str) -> tuple[str | None, str]:
    """``(member, step)`` of a group plan's step; ``(None, step)`` for a one-service plan's."""
    service, sep, step = name.partition(GROUP_STEP_SEPARATOR)
    return (service, step) if sep else (None, name)


@dataclass(frozen=True, slots=True)
class MemberOutcome:
    service: str
    state: Literal["back", "not_back", "rolling_back", "pending", "skipped"]
    why: str = ""


def group_outcome(
    order: Sequence[str], steps: Sequence[tuple[str, str, str | None]], skipped: Mapping[str, str]
) -> list[MemberOutcome]:
    """Where each member stands, from the plan's ``(step name, state, error)`` in order.

    ``back``: every step of its plan is done (or skipped); ``not_back``: a step
    failed, or an earlier member's failure stopped the group before it;
    ``rolling_back``: a step of it runs or is done and the rest wait; ``pending``:
    nothing of it has run and nothing failed yet; ``skipped``: it had nothing to
    roll back (``skipped`` says why).
    """
    by_member: dict[str, list[tuple[str, str, str | None]]] = {}
    for name, state, error in steps:
        service, step = split_step(name)
        if service is not None:
            by_member.setdefault(service, []).append((step, str(state), error))
    failed_at: str | None = None
    out: list[MemberOutcome] = []
    for service in order:
        if service in skipped:
            out.append(MemberOutcome(service, "skipped", skipped[service]))
            continue
        own = by_member.get(service, [])
        failed = next(((step, error) for step, state, error in own if state == "failed"), None)
        if failed is not None:
            failed_at = failed_at or service
            out.append(MemberOutcome(service, "not_back", f"step {failed[0]} failed: {failed[1] or ''}"))
        elif own and all(state in ("done", "skipped") for _, state, _ in own):
            out.append(MemberOutcome(service, "back"))
        elif failed_at is not None:
            out.append(MemberOutcome(service, "not_back", f"not started: the group stopped at {failed_at}"))
        elif any(state != "pending" for _, state, _ in own):
            out.append(MemberOutcome(service, "rolling_back"))
        else:
            out.append(MemberOutcome(service, "pending"))
    return out


def group_summary(outcomes: Sequence[MemberOutcome]) -> str:
    """Which members are back and which are not, in one line (notifications, the record's error)."""
    back = [o.service for o in outcomes if o.state == "back"]
    waiting = ("not_back", "pending", "rolling_back")
    not_back = [f"{o.service} ({o.why or o.state.replace('_', ' ')})" for o in outcomes if o.state in waiting]
    skipped = [f"{o.service} ({o.why})" for o in outcomes if o.state == "skipped"]
    parts = [f"back: {', '.join(back) or 'none'}"]
    if not_back:
        parts.append(f"not back: {'; '.join(not_back)}")
    if skipped:
        parts.append(f"skipped: {'; '.join(skipped)}")
    return "; ".join(parts)


def group_of_record(record: RollbackRecord) -> Mapping[str, Any] | None:
    """The group part of a rollback's target (None: a one-service rollback)."""
    group = record.target.get("group")
    return group if isinstance(group, Mapping) else None


def group_outcomes(record: RollbackRecord) -> list[MemberOutcome]:
    """Where each member of a group's rollback stands (empty for a one-service rollback)."""
    group = group_of_record(record)
    if group is None:
        return []
    members = group.get("members") or []
    skipped = {str(m["service"]): str(m["skipped"]) for m in members if m.get("skipped")}
    steps = [(s.name, str(s.state), s.error) for s in record.steps]
    return group_outcome([str(m["service"]) for m in members], steps, skipped)


def rule_keys(record: RollbackRecord) -> list[tuple[str, str]]:
    """``(service, rule)`` of each rule that fired for the rollback, members' included."""
    keys = {(r.service or record.service, r.rule) for r in record.reasons if r.rule is not None}
    return sorted(keys)


def member_services(record: RollbackRecord) -> list[str]:
    """The services a rollback is for: the group's members in order, or its own service."""
    group = group_of_record(record)
    if group is None:
        return [record.service]
    return [str(m["service"]) for m in group.get("members") or ()]
