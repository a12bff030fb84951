"""Operators' requests: veto, approve, acknowledge, roll back by hand, retry, promote, rehearse.

The API's one entry into decisions. Each vote is guarded by
``watchdogd.decisions.guard`` and applied with one conditional write, so of
a veto and an execution racing, exactly one wins and the other is told so
(409). Every request is reported with who asked.
"""

from __future__ import annotations

from collections.abc import Callable

from watchdogd.clock import Clock
from watchdogd.decisions import guard, may_rehearse, rule_keys, veto_mutes
from watchdogd.errors import Conflict, Invalid, NotFound
from watchdogd.model import (
    PROPOSED_STATES,
    Deployment,
    DeploymentState,
    Reason,
    RollbackRecord,
    RollbackState,
)
from watchdogd.store import Store
from watchdogd.watch.deployments import Deployments
from watchdogd.watch.execution import Executions, rollback_target
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.report import Reporter
from watchdogd.watch.world import World


class Operators:
    def __init__(
        self,
        *,
        store: Store,
        report: Reporter,
        world: Callable[[], World],
        proposer: Proposer,
        executions: Executions,
        deployments: Deployments,
        clock: Clock,
    ) -> None:
        self.store = store
        self.report = report
        self.world = world
        self.proposer = proposer
        self.executions = executions
        self.deployments = deployments
        self.clock = clock

    async def rollback(self, rollback_id: str) -> RollbackRecord:
        record = await self.store.get(rollback_id)
        if record is None:
            raise NotFound(f"no rollback {rollback_id}")
        return record

    async def deployment(self, deployment_id: str) -> Deployment:
        deployment = await self.store.deployment(deployment_id)
        if deployment is None:
            raise NotFound(f"no deployment {deployment_id}")
        return deployment

    def _service_known(self, record: RollbackRecord) -> None:
        if record.service not in self.world().config.services:
            raise Conflict(
                f"service '{record.service}' is no longer in the config: rollback {record.id} cannot run",
                "service_removed",
            )

    async def _refused(self, record: RollbackRecord, what: str) -> Conflict:
        current = await self.rollback(record.id)
        return Conflict(f"rollback {record.id} is {current.state}: {what}")

    # --- votes ---------------------------------------------------------------------------------

    async def veto(self, rollback_id: str, actor: str, reason: str, mute_for: float | None) -> RollbackRecord:
        record = await self.rollback(rollback_id)
        verdict = guard("veto", record.state)
        if verdict.outcome == "noop":
            return record
        if verdict.outcome == "refuse" or not await self.store.transition(
            record.id, RollbackState.VETOED, PROPOSED_STATES, f"vetoed by {actor}: {reason}"
        ):
            raise await self._refused(record, "too late to veto")
        self.proposer.disarm(record.id)
        # a group's proposal mutes each member's rules that fired, under that member's name
        keys = rule_keys(record)
        mutes = veto_mutes(
            [rule if svc == record.service else f"{svc}/{rule}" for svc, rule in keys], mute_for, self.clock()
        )
        for (svc, rule), until in zip(keys, mutes.values(), strict=True):
            await self.store.mute(svc, rule, until)
        await self.report.about(
            "veto",
            record,
            actor=actor,
            detail={
                "reason": reason,
                "mute_for": mute_for,
                "muted": sorted(mutes),
                "muted_until": "the rule clears" if not mute_for else self.clock() + mute_for,
                "state": "vetoed",
            },
            summary=f"rollback of {record.service} vetoed by {actor}: {reason}",
        )
        return await self.rollback(rollback_id)

    async def approve(self, rollback_id: str, actor: str) -> RollbackRecord:
        record = await self.rollback(rollback_id)
        verdict = guard("approve", record.state)
        if verdict.outcome == "noop":
            return record
        if verdict.outcome == "refuse":
            raise Conflict(f"rollback {rollback_id} {verdict.why}")
        self._service_known(record)
        # Claimed here, atomically against a veto: a 200 means it runs; a veto after it gets 409.
        if record.dry_run:
            won = await self.executions.dry_run(record)
        else:
            won = await self.store.transition(record.id, RollbackState.EXECUTING, PROPOSED_STATES)
        if not won:
            current = await self.rollback(rollback_id)
            if current.state in (RollbackState.EXECUTING, RollbackState.SUCCEEDED):
                return current
            raise Conflict(f"rollback {rollback_id} is {current.state}: it cannot be approved")
        self.proposer.disarm(record.id)
        await self.report.about(
            "approve",
            record,
            actor=actor,
            detail={"state": "dry_run" if record.dry_run else "executing"},
            summary=f"rollback approved by {actor}",
        )
        if not record.dry_run:
            self.executions.start(record.id, (RollbackState.EXECUTING,))
        return await self.rollback(rollback_id)

    async def ack(self, rollback_id: str, actor: str) -> RollbackRecord:
        record = await self.rollback(rollback_id)
        if guard("ack", record.state).outcome == "apply":
            await self.report.about(
                "ack",
                record,
                actor=actor,
                detail={"state": str(record.state)},
            )
        return record

    async def retry(self, rollback_id: str, actor: str) -> RollbackRecord:
        """Run a failed rollback again from its journal: finished steps are not repeated."""
        record = await self.rollback(rollback_id)
        verdict = guard("retry", record.state, record.dry_run)
        if verdict.outcome == "noop":
            return record
        if verdict.outcome == "refuse":
            raise Conflict(f"rollback {rollback_id} {verdict.why}")
        self._service_known(record)
        if not await self.store.transition(record.id, RollbackState.EXECUTING, (RollbackState.FAILED,)):
            raise await self._refused(record, "it cannot be retried")
        failed = [s.name for s in record.steps if s.state == "failed"]
        await self.report.about(
            "retry",
            record,
            actor=actor,
            detail={"from_step": failed[0] if failed else None, "state": "executing"},
            summary=f"rollback of {record.service} retried by {actor}",
        )
        self.executions.start(record.id, (RollbackState.EXECUTING,))
        return await self.rollback(rollback_id)

    # --- deployments ------------------------------------------------------------------------------

    async def manual_rollback(self, deployment_id: str, actor: str, reason: str) -> RollbackRecord:
        """An operator's rollback: proposed as a rule's is, through the service's policy."""
        deployment = await self.deployment(deployment_id)
        latest = await self.proposer.latest_for(deployment)  # its group's counts
        if latest is not None and (latest.proposed or latest.state is RollbackState.EXECUTING):
            return latest  # one is on its way already: asking again changes nothing
        if deployment.state not in (DeploymentState.WATCHING, DeploymentState.UNVERIFIED):
            raise Conflict(f"deployment {deployment_id} is {deployment.state}")
        if deployment.service not in self.world().config.services:
            raise Conflict(f"service '{deployment.service}' is no longer in the config", "service_removed")
        now = self.clock()
        record, _ = await self.proposer.propose(
            deployment, Reason(at=now, text=reason, operator=actor), actor=actor
        )
        return record

    async def promote(self, deployment_id: str, actor: str) -> Deployment:
        deployment = await self.deployment(deployment_id)
        if deployment.state is DeploymentState.PROMOTED:
            return deployment
        latest = await self.proposer.latest_for(deployment)  # its group's counts
        if latest is not None and (latest.proposed or latest.state is RollbackState.EXECUTING):
            raise Conflict(f"deployment {deployment_id} has a rollback {latest.state}: veto it first")
        return await self.deployments.finish(deployment, DeploymentState.PROMOTED, actor)

    async def rehearse(self, deployment_id: str, actor: str) -> dict[str, str]:
        """Run the deployment's down SQL and verify queries in a transaction, then roll it back."""
        deployment = await self.deployment(deployment_id)
        svc = self.world().config.services.get(deployment.service)
        if svc is None:
            raise Invalid(f"service '{deployment.service}' is no longer in the config")
        refusal = may_rehearse(svc.plan(), deployment.facts.sql_policy)
        if refusal is not None:
            raise Conflict(refusal, "sql_step_off")
        from watchdogd.rollback.sql import SqlStep  # asyncpg only when a rehearsal is asked

        result = await SqlStep().rehearse(rollback_target(deployment, (), svc))
        outcome = {"status": result.status, "detail": result.detail}
        await self.report(
            "rehearsal", service=deployment.service, deployment_id=deployment_id, actor=actor, detail=outcome
        )
        return {"deployment_id": deployment_id, **outcome}
