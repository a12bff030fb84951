"""Proposals: a firing rule or an operator asks for a rollback; its timer acts when it is due.

The decisions are ``watchdogd.decisions``'; this module performs them. A
deployment has one open proposal: the store joins a second reason into it in
the same transaction that would have made a new one, so two rules firing at
once make one proposal, and the earlier ``execute_at`` of the two is kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

import structlog

from watchdogd.clock import Clock
from watchdogd.decisions import Fire, Verdict, group_of_record, on_fire, plan_steps, proposal, rule_keys
from watchdogd.decisions import due as due_verdict
from watchdogd.model import (
    PROPOSED_STATES,
    Deployment,
    Reason,
    RollbackRecord,
    RollbackState,
    Transition,
    why,
)
from watchdogd.rules import EvalState
from watchdogd.store import Store
from watchdogd.watch.execution import Executions, target_of
from watchdogd.watch.groups import Groups
from watchdogd.watch.report import SYSTEM, Reporter
from watchdogd.watch.tasks import Health, Supervisor
from watchdogd.watch.world import RuleRun, World

log = structlog.get_logger("watchdogd")


class Proposer:
    def __init__(
        self,
        *,
        store: Store,
        report: Reporter,
        supervisor: Supervisor,
        health: Health,
        world: Callable[[], World],
        executions: Executions,
        clock: Clock,
        leading: Callable[[], bool],
        output: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.store = store
        self.report = report
        self.supervisor = supervisor
        self.health = health
        self.world = world
        self.executions = executions
        self.clock = clock
        self.leading = leading
        self.output = output
        """The last output of a source (an exec source's failed tests), for the reasons."""
        self.groups = Groups(store, world)
        self._group_locks: dict[str, asyncio.Lock] = {}

    # --- rules ---------------------------------------------------------------------------------

    async def on_firing(
        self, run: RuleRun, deployment: Deployment, state: EvalState, entered: Transition | None
    ) -> None:
        """A rule is firing at this evaluation (``entered``: the transition into firing, if this was it)."""
        rule = run.rule
        at = entered.at if entered is not None else (state.last_eval or self.clock())
        muted = await self.store.muted_until(run.service, rule.name)
        group = self.groups.of(run.service)
        if group is None:
            latest = await self.store.latest_for(deployment.id)
            open_rules = latest.rules if latest is not None and latest.proposed else None
            named = rule.name
        else:  # the group's open proposal, on whichever member's deployment it was made
            latest = await self.groups.open_proposal(group)
            open_rules = frozenset(f"{s}/{r}" for s, r in rule_keys(latest)) if latest is not None else None
            named = f"{run.service}/{rule.name}"
        fire = Fire(named, rule.action, rule.immediate, at, muted, entered is not None)
        verdict = on_fire(fire, deployment.state, open_rules)
        if verdict is Verdict.NOTHING:
            return
        values = entered.values if entered is not None else state.failed_values or (state.value,)
        reason = Reason(
            at=at,
            text=entered.reason if entered is not None else state.reason,
            rule=rule.name,
            value=state.value,
            values=tuple(values),
            threshold=entered.threshold if entered is not None else state.threshold,
            severity=rule.severity,
            output=self.output(run.config.source),
        )
        ids = {"service": run.service, "deployment_id": deployment.id}
        if verdict is Verdict.MUTED:
            await self.report("fire_muted", **ids, detail={**reason.to_json(), "muted_until": muted})
        elif verdict is Verdict.NOTIFY:
            summary = f"{rule.name} is firing: {reason.text}"
            await self.report("rule_firing", **ids, detail=reason.to_json(), summary=summary)
        else:
            await self.propose(deployment, reason, immediate=rule.immediate)

    # --- proposing ----------------------------------------------------------------------------------

    async def propose(
        self, deployment: Deployment, reason: Reason, *, immediate: bool = False, actor: str = SYSTEM
    ) -> tuple[RollbackRecord, bool]:
        """Propose a rollback of ``deployment``, or join its open proposal; True when a new one was made."""
        group = self.groups.of(deployment.service)
        if group is not None:
            async with self._group_locks.setdefault(group, asyncio.Lock()):
                return await self._propose_group(group, deployment, reason, immediate, actor)
        world = self.world()
        # the freshest record: migrations registered a moment ago belong in the plan
        deployment = await self.store.deployment(deployment.id) or deployment
        service = world.service(deployment.service)
        sql_policy = deployment.facts.sql_policy
        made = proposal(
            world.policy(deployment.service, sql_policy, deployment.facts.backup_id), reason.at, immediate
        )
        steps = plan_steps(service, sql_policy)
        record, created = await self.store.propose(
            deployment.id,
            deployment.service,
            steps,
            reason,
            target_of(deployment, [reason], service, made.dry_run),
            made.state,
            made.execute_at,
        )
        ids = {"service": deployment.service, "deployment_id": deployment.id, "rollback_id": record.id}
        if created:
            mode = "dry-run" if made.dry_run else str(made.state)
            await self.report(
                "proposed",
                **ids,
                actor=actor,
                detail={
                    "reasons": [r.to_json() for r in record.reasons],
                    "execute_at": record.execute_at,
                    "state": str(record.state),
                    "steps": list(steps),
                    "mode": mode,
                },
                summary=f"rollback of {deployment.service} proposed: {why(record.reasons)}",
            )
        else:
            # the plan verifies every rule that fired, the joining one included
            target = target_of(deployment, record.reasons, service, record.dry_run)
            await self.store.update_target(record.id, target, PROPOSED_STATES)
            await self.report(
                "reason_added",
                **ids,
                actor=actor,
                detail={**reason.to_json(), "execute_at": record.execute_at, "state": str(record.state)},
            )
        self.arm(record)
        return record, created

    async def _propose_group(
        self, group: str, deployment: Deployment, reason: Reason, immediate: bool, actor: str
    ) -> tuple[RollbackRecord, bool]:
        """One proposal for the group: made on this member's deployment, or joined where it is open.

        Serialized per group in this process (only the leader proposes), so two
        members firing at once make one proposal.
        """
        deployment = await self.store.deployment(deployment.id) or deployment
        reason = dataclasses.replace(reason, service=deployment.service)
        joined = await self.groups.open_proposal(group)
        anchor = (await self.store.deployment(joined.deployment_id) if joined else None) or deployment
        members = await self.groups.members(group, anchor, joined)
        made = proposal(self.groups.policy(members), reason.at, immediate)
        dry_run = joined.dry_run if joined is not None else made.dry_run
        reasons = (*joined.reasons, reason) if joined is not None else (reason,)
        target, steps = self.groups.plan(group, anchor, members, reasons, dry_run)
        record, created = await self.store.propose(
            anchor.id, anchor.service, steps, reason, target, made.state, made.execute_at
        )
        ids = {"service": anchor.service, "deployment_id": anchor.id, "rollback_id": record.id}
        names = ", ".join(m.service for m in members)
        if created:
            mode = "dry-run" if made.dry_run else str(made.state)
            skipped = {m.service: m.skipped for m in members if m.skipped}
            await self.report(
                "proposed",
                **ids,
                actor=actor,
                detail={
                    "reasons": [r.to_json() for r in record.reasons],
                    "execute_at": record.execute_at,
                    "state": str(record.state),
                    "steps": list(steps),
                    "mode": mode,
                    "group": {"name": group, "services": [m.service for m in members], "skipped": skipped},
                },
                summary=f"rollback of group {group} ({names}) proposed: {why(record.reasons)}",
            )
        else:
            target, _ = self.groups.plan(group, anchor, members, record.reasons, record.dry_run)
            await self.store.update_target(record.id, target, PROPOSED_STATES)
            await self.report(
                "reason_added",
                **ids,
                actor=actor,
                detail={
                    **reason.to_json(),
                    "execute_at": record.execute_at,
                    "state": str(record.state),
                    "group": group,
                },
            )
        self.arm(record)
        return record, created

    async def latest_for(self, deployment: Deployment) -> RollbackRecord | None:
        """The newest rollback covering ``deployment``: its own, or its group's that names it."""
        return await self.groups.covering(deployment)

    async def replan(self, deployment: Deployment) -> RollbackRecord | None:
        """The deployment's facts changed (migrations added): its open proposal's plan follows.

        Returns the proposal when its plan now has them, None when there is none
        open; a proposal already executing keeps the plan it started with.
        """
        latest = await self.groups.covering(deployment)
        if latest is None or not latest.proposed:
            return None
        group = group_of_record(latest)
        if group is not None:
            anchor = await self.store.deployment(latest.deployment_id) or deployment
            members = await self.groups.members(str(group.get("name")), anchor, latest)
            target, _ = self.groups.plan(
                str(group.get("name")), anchor, members, latest.reasons, latest.dry_run
            )
        else:
            service = self.world().service(deployment.service)
            target = target_of(deployment, latest.reasons, service, latest.dry_run)
        if not await self.store.update_target(latest.id, target, PROPOSED_STATES):
            return None
        await self.report(
            "plan_updated",
            service=deployment.service,
            deployment_id=deployment.id,
            rollback_id=latest.id,
            detail={"migrations": [m.id for m in deployment.facts.migrations]},
        )
        return latest

    # --- timers ---------------------------------------------------------------------------------

    def arm(self, record: RollbackRecord) -> None:
        """A timer that acts when the proposal is due (end of the veto window, approval deadline)."""
        name = f"timer:{record.id}"
        self.supervisor.cancel(name)
        if record.execute_at is None or not record.proposed or not self.leading():
            return
        execute_at = record.execute_at

        async def wait() -> None:
            await self.clock.sleep(max(0.0, execute_at - self.clock()))
            # meanwhile it stays journaled pending; a store refusing writes is retried
            await self.health.until_stored(lambda _: self.due(record.id))

        self.supervisor.job(name, wait())

    def disarm(self, rollback_id: str) -> None:
        self.supervisor.cancel(f"timer:{rollback_id}")

    def disarm_all(self) -> None:
        self.supervisor.cancel_prefix("timer:")

    def armed(self, rollback_id: str) -> bool:
        return bool(self.supervisor.named(f"timer:{rollback_id}"))

    async def due(self, rollback_id: str) -> None:
        record = await self.store.get(rollback_id)
        if record is None or not record.proposed:
            return
        deployment = await self.store.deployment(record.deployment_id)
        if deployment is None:
            return
        world = self.world()
        if deployment.service not in world.config.services:
            await self.cancel([record], f"service '{deployment.service}' was removed from the config")
            return
        policy = (
            await self.groups.policy_of(record)
            if group_of_record(record) is not None
            else world.policy(deployment.service, deployment.facts.sql_policy, deployment.facts.backup_id)
        )
        verdict = due_verdict(policy, record.state, record.execute_at, self.clock())
        if verdict == "execute":
            if record.dry_run:
                await self.executions.dry_run(record)
            else:
                self.executions.start(record.id)
        elif verdict == "expire":
            why_ = "no approval in time"
            if await self.store.transition(
                record.id, RollbackState.CANCELLED, (RollbackState.AWAITING_APPROVAL,), why_
            ):
                await self.report.about(
                    "expired",
                    record,
                    detail={"reason": why_, "state": "cancelled"},
                    summary=f"rollback of {record.service} cancelled: {why_}",
                )
        else:
            self.arm(record)  # woken early: wait the rest

    async def cancel(self, records: Sequence[RollbackRecord], reason: str) -> None:
        """Cancel open proposals (their deployment was superseded, their service removed)."""
        for record in records:
            self.disarm(record.id)
            if record.proposed and not await self.store.transition(
                record.id, RollbackState.CANCELLED, PROPOSED_STATES, reason
            ):
                continue
            await self.report.about(
                "cancelled",
                record,
                detail={"reason": reason, "state": "cancelled"},
                summary=f"rollback of {record.service} cancelled: {reason}",
            )
