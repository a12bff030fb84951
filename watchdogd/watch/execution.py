"""Running a rollback: one claim, the plan through the journaled executor, the outcome.

A rollback runs only once it is claimed: moved to ``executing`` by one
conditional write, which a veto racing it cannot also win. Only a resume (after
a restart, a failover or a store that refused writes) or an operator's retry
starts from ``executing`` itself; anything else would run the plan twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import structlog

from watchdogd.config.models import HttpSource, ServiceConfig
from watchdogd.decisions import group_of_record, group_outcomes, group_summary
from watchdogd.model import (
    PROPOSED_STATES,
    Deployment,
    DeploymentState,
    Reason,
    RollbackRecord,
    RollbackState,
    why,
)
from watchdogd.rollback.base import RollbackTarget, Step
from watchdogd.rollback.members import MemberStep
from watchdogd.rollback.plan import Executor, target_from_json, target_to_json
from watchdogd.rollback.steps import VerifyStep, WebhookStep
from watchdogd.rules import condition_now
from watchdogd.sources import Measure
from watchdogd.sources.http import HttpProbe
from watchdogd.store import Store
from watchdogd.telemetry import Metrics
from watchdogd.watch.freezes import Freezes
from watchdogd.watch.live import Watched
from watchdogd.watch.report import Reporter
from watchdogd.watch.tasks import Health, Supervisor
from watchdogd.watch.world import World

log = structlog.get_logger("watchdogd")

VERIFY_POLL = 0.5


def rollback_target(
    deployment: Deployment, reasons: Sequence[Reason], service: ServiceConfig
) -> RollbackTarget:
    """What a rollback of ``deployment`` returns to, and why."""
    facts = deployment.facts
    return RollbackTarget(
        service=deployment.service,
        deployment_id=deployment.id,
        config=service,
        previous=facts.previous,
        current=facts.current,
        migrations=facts.migrations,
        fired_rules=tuple(r.rule for r in reasons if r.rule is not None),
        reason=why(reasons),
        image=deployment.image,
        previous_image=deployment.previous_image,
        reasons=tuple(reasons),
    )


def target_of(
    deployment: Deployment, reasons: Sequence[Reason], service: ServiceConfig, dry_run: bool = False
) -> dict[str, Any]:
    """The plan's target as the journal keeps it."""
    return {**target_to_json(rollback_target(deployment, reasons, service)), "dry_run": dry_run}


class Plans:
    """The steps a service's plan runs, built from its config when a plan starts."""

    def __init__(
        self,
        world: Callable[[], World],
        watched: Watched,
        docker: Callable[[], Any],
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        overrides: Mapping[str, Step] | None = None,
        store: Store | None = None,
    ) -> None:
        self.store = store
        """Where command steps journal their runs (None: they run unjournaled)."""
        self.overrides = dict(overrides or {})
        """Steps that replace the ones the config would build (in-memory tests record them)."""
        self.world = world
        self.watched = watched
        self.docker = docker
        self.session = session
        self.clock = clock

    def steps(self, service: str, since: float) -> dict[str, Step]:
        """``since``: when the plan started; verify judges only evaluations made after it."""
        # the steps' drivers (asyncpg, redis, the Docker SDK) are imported only when a plan runs
        from watchdogd.rollback.command import CommandStep
        from watchdogd.rollback.redis_purge import RedisPurgeStep
        from watchdogd.rollback.restore import RestoreStep
        from watchdogd.rollback.sql import SqlStep

        svc = self.world().service(service)
        steps: dict[str, Step] = {"sql": SqlStep()}
        probe = self.health_probe(svc)
        if (svc.container or svc.compose) and "container" not in self.overrides:
            from watchdogd.rollback.container import ContainerStep

            steps["container"] = ContainerStep(self.docker(), probe=probe)
        if svc.swarm_service and "container" not in self.overrides:
            from watchdogd.rollback.swarm import SwarmStep

            steps["container"] = SwarmStep(self.docker(), probe=probe)
        if svc.rollback.redis_purge is not None:
            steps["redis_purge"] = RedisPurgeStep(svc.rollback.redis_purge, self.deployed_at)
        if svc.rollback.webhook is not None:
            steps["webhook"] = WebhookStep(svc.rollback.webhook)
        if svc.database is not None:
            steps["restore"] = RestoreStep(self.world().config, self.backup_of)
        for name, command in svc.rollback.commands.items():
            steps[f"command:{name}"] = CommandStep(name, command, self.store)

        async def health(_: RollbackTarget) -> tuple[bool | None, str]:
            assert probe is not None  # only handed to the step when there is one
            ok = await probe()
            return ok, "health probe passes" if ok else "health probe fails"

        async def rules(target: RollbackTarget) -> tuple[bool | None, str]:
            return self.judge(service, target.fired_rules, since)

        steps["verify"] = VerifyStep(svc.rollback.verify, health if probe else None, rules, poll=VERIFY_POLL)
        return {**steps, **self.overrides}

    async def deployed_at(self, deployment_id: str) -> float | None:
        """When a deployment started (redis_purge's ``since_deploy``); None without a store."""
        deployment = await self.store.deployment(deployment_id) if self.store is not None else None
        return deployment.started_at if deployment is not None else None

    async def backup_of(self, deployment_id: str) -> str | None:
        """The backup a deployment names (the restore step's); None without a store."""
        deployment = await self.store.deployment(deployment_id) if self.store is not None else None
        return deployment.facts.backup_id if deployment is not None else None

    def judge(self, service: str, fired: Sequence[str], since: float) -> tuple[bool | None, str]:
        """Are the fired rules' conditions false again, on values evaluated after ``since``?

        True when each is; False when one still holds; None while some could
        not be judged yet (no value since the plan started, no threshold): the
        verify step waits for them, and at its timeout passes naming them.
        """
        live = self.watched.get(service)
        states = live.states if live is not None else {}
        world = self.world()
        still, unjudged = [], []
        for name in fired:
            run, state = world.run(service, name), states.get(name)
            if run is None or state is None or state.last_eval is None or state.last_eval <= since:
                unjudged.append(name)
                continue
            holds = condition_now(run.rule, state)
            if holds is None:
                unjudged.append(name)
            elif holds:
                still.append(name)
        if still:
            return False, "condition still true: " + ", ".join(still)
        if unjudged:
            return None, "could not judge " + ", ".join(unjudged) + " (no value since the rollback started)"
        return True, "fired rules' conditions are false again" if fired else "no rule fired"

    def health_probe(self, svc: ServiceConfig) -> Callable[[], Awaitable[bool]] | None:
        source = self.world().config.sources.get(svc.health or "")
        if not isinstance(source, HttpSource):
            return None
        probe = HttpProbe(svc.health or "health", source, self.session)
        up = Measure("field", "up")

        async def healthy() -> bool:
            answer = await probe.fetch([up], self.clock())
            return answer[up].value == 1.0

        return healthy


class Executions:
    """Claims and runs plans; at most one run of a rollback in this process."""

    def __init__(
        self,
        *,
        store: Store,
        report: Reporter,
        supervisor: Supervisor,
        health: Health,
        world: Callable[[], World],
        watched: Watched,
        plans: Plans,
        metrics: Metrics,
        clock: Callable[[], float],
        leading: Callable[[], bool],
        freezes: Freezes | None = None,
    ) -> None:
        self.freezes = freezes
        """Freezes the service after a rollback (None: no freezes, as in-memory tests of plans)."""
        self.store = store
        self.report = report
        self.supervisor = supervisor
        self.health = health
        self.world = world
        self.watched = watched
        self.plans = plans
        self.metrics = metrics
        self.clock = clock
        self.leading = leading
        self._running: set[str] = set()
        self._starts = 0

    def running(self, rollback_id: str) -> bool:
        return rollback_id in self._running

    def start(self, rollback_id: str, claimed_from: Sequence[RollbackState] = PROPOSED_STATES) -> None:
        """Run the plan once it is claimed from one of ``claimed_from`` (only the leader runs plans)."""
        if self.leading():
            # Each start is its own task: of a timer and an approval starting together, the one
            # whose claim fails ends at once; the other must not be dropped for sharing a name.
            self._starts += 1
            name = f"execute:{rollback_id}:{self._starts}"
            self.supervisor.job(name, self._execute(rollback_id, tuple(claimed_from)))

    async def _execute(self, rollback_id: str, claimed_from: tuple[RollbackState, ...]) -> None:
        # Nothing runs unjournaled: after a refused write it resumes from the journal, claimed or not.
        await self.health.until_stored(
            lambda retry: self._claim(
                rollback_id, (*claimed_from, RollbackState.EXECUTING) if retry else claimed_from
            )
        )

    async def _claim(self, rollback_id: str, claimed_from: tuple[RollbackState, ...]) -> None:
        record = await self.store.get(rollback_id)
        if record is None or (record.final and record.state not in claimed_from):
            return
        deployment = await self.store.deployment(record.deployment_id)
        if deployment is None or not await self.store.transition(
            rollback_id, RollbackState.EXECUTING, claimed_from
        ):
            return
        if rollback_id in self._running:
            return  # claimed twice in this process (an approval and a resume): it runs once
        self._running.add(rollback_id)
        try:
            await self._run(record, deployment)
        finally:
            self._running.discard(rollback_id)

    async def _run(self, record: RollbackRecord, deployment: Deployment) -> None:
        store, service = self.store, deployment.service
        # a group's rollback undoes every member's deployment it names (a member back already stays so)
        undone = await self._undone(record, deployment)
        for each in undone:
            await store.set_deployment_state(
                each.id,
                DeploymentState.ROLLING_BACK,
                (
                    DeploymentState.WATCHING,
                    DeploymentState.UNVERIFIED,
                    DeploymentState.ROLLING_BACK,
                    DeploymentState.ROLLBACK_FAILED,
                ),
            )
            await self.watched.refresh(each.service)
        fired = [r.at for r in record.reasons if r.rule is not None]
        if fired and record.started_at is None:
            self.metrics.detection_latency.observe(max(0.0, self.clock() - min(fired)))
        ids = {"service": service, "deployment_id": deployment.id, "rollback_id": record.id}
        await self.report(
            "rollback_started",
            **ids,
            detail={"reasons": [r.to_json() for r in record.reasons], "state": "executing"},
            summary=f"rolling back {service}: {why(record.reasons)}",
        )
        svc = self.world().config.services.get(service)
        if svc is None:
            error = f"service '{service}' is no longer in the config: the plan cannot run"
            await store.transition(record.id, RollbackState.FAILED, (RollbackState.EXECUTING,), error)
            done = await store.get(record.id) or record
        else:
            current = await store.get(record.id) or record
            approver = await self._approver(record)
            target = dataclasses.replace(
                target_from_json(current.target, svc),
                approved_by=approver,
                rollback_id=record.id,
                reasons=tuple(record.reasons),
            )
            steps_ = self._steps(current, self.clock(), approver)
            done = await Executor(store, steps_, self.metrics).execute(current, target)
        await self._finish(done, deployment, undone)

    async def _finish(self, done: RollbackRecord, deployment: Deployment, undone: list[Deployment]) -> None:
        """A rollback ended: the deployments it undid are rolled back or not, and that is said."""
        store, service = self.store, deployment.service
        ids = {"service": service, "deployment_id": deployment.id, "rollback_id": done.id}
        ok = done.state is RollbackState.SUCCEEDED
        outcomes = {o.service: o for o in group_outcomes(done)}
        for each in undone:
            outcome = outcomes.get(each.service)
            back = ok or (outcome is not None and outcome.state == "back")
            await store.set_deployment_state(
                each.id,
                DeploymentState.ROLLED_BACK if back else DeploymentState.ROLLBACK_FAILED,
                (DeploymentState.ROLLING_BACK,),
            )
            await self.watched.refresh(each.service)
        steps = [{"name": s.name, "state": s.state, "error": s.error} for s in done.steps]
        detail: dict[str, Any] = {"steps": steps, "error": done.error, "state": done.state}
        what = service
        if outcomes:
            group = group_of_record(done) or {}
            what = f"group {group.get('name')} ({', '.join(outcomes)})"
            detail["group"] = {
                "name": group.get("name"),
                "members": [
                    {"service": o.service, "state": o.state, "why": o.why} for o in outcomes.values()
                ],
                "summary": group_summary(list(outcomes.values())),
            }
        said = "succeeded" if ok else f"failed: {done.error}"
        if outcomes:
            said += f"; {detail['group']['summary']}"
        await self.report(
            "rollback_succeeded" if ok else "rollback_failed",
            **ids,
            detail=detail,
            summary=f"rollback of {what} {said}",
        )
        if self.freezes is not None:
            await self.freezes.after_rollback(done, ok)

    async def reconcile(self) -> None:
        """Finish what a rollback that ended just before the process did left undone.

        The record of a rollback becomes final before its deployments leave
        ``rolling_back``: a crash in between left them there, and the service then
        refused every deploy as "a rollback is executing". Each such deployment is
        finished from the rollback that undid it, as that rollback's end would have;
        one with no ended rollback at all becomes ``rollback_failed``, for an operator.
        """
        store = self.store
        # read before the deployments: a rollback resumed now finishes its own, and one that
        # ended since was in this process's runs until its deployments were done
        resumed = {member for record in await store.unfinished() for member in _undone_ids(record)}
        open_ones = await store.deployments(open_only=True)
        stuck = {
            d.id: d for d in open_ones if d.state is DeploymentState.ROLLING_BACK and d.id not in resumed
        }
        if not stuck:
            return
        ended = await store.in_states((RollbackState.SUCCEEDED, RollbackState.FAILED))
        for record in reversed(ended):  # newest first: the rollback that ended last decides
            names = [d for d in _undone_ids(record) if d in stuck]
            for name in names:
                stuck.pop(name)
            if not names or record.id in self._running:
                continue  # a run in this process is finishing it
            leader = await store.deployment(record.deployment_id)
            if leader is not None:
                log.warning("rollback_finished_after_restart", rollback=record.id, deployments=names)
                await self._finish(record, leader, await self._undone(record, leader))
        for deployment in stuck.values():
            log.warning(
                "rolling_back_without_rollback",
                deployment=deployment.id,
                service=deployment.service,
                kept="rollback_failed: no rollback of it runs or ended; an operator decides",
            )
            await store.set_deployment_state(
                deployment.id, DeploymentState.ROLLBACK_FAILED, (DeploymentState.ROLLING_BACK,)
            )
            await self.watched.refresh(deployment.service)

    async def _undone(self, record: RollbackRecord, deployment: Deployment) -> list[Deployment]:
        """The deployments the rollback undoes: its own, and in a group each member's it names."""
        group = group_of_record(record)
        if group is None:
            return [deployment]
        out = []
        for member in group.get("members") or ():
            found = (
                deployment
                if member.get("deployment_id") == deployment.id
                else await self.store.deployment(str(member["deployment_id"]))
                if member.get("deployment_id")
                else None
            )
            if found is not None:
                out.append(found)
        return out

    def _steps(self, record: RollbackRecord, since: float, approver: str | None = None) -> dict[str, Step]:
        """The plan's steps: the service's own, or each group member's bound to its own target."""
        group = group_of_record(record)
        if group is None:
            return self.plans.steps(record.service, since)
        world = self.world()
        steps: dict[str, Step] = {}
        for member in group.get("members") or ():
            name, raw = str(member["service"]), member.get("target")
            svc = world.config.services.get(name)
            if raw is None or svc is None:
                continue  # skipped, or gone from the config: its steps are reported "not configured"
            target = dataclasses.replace(
                target_from_json(raw, svc),
                approved_by=approver,
                rollback_id=record.id,
                reasons=tuple(r for r in record.reasons if (r.service or record.service) == name),
            )
            for step_name, step in self.plans.steps(name, since).items():
                qualified = f"{name}/{step_name}"
                steps[qualified] = MemberStep(qualified, step, target)
        return steps

    async def _approver(self, record: RollbackRecord) -> str | None:
        """The operator who approved or retried this rollback, from the audit (None: none did)."""
        entries = await self.store.audit_entries(deployment_id=record.deployment_id)
        for entry in entries:  # newest first
            if entry.rollback_id == record.id and entry.action in ("approve", "retry"):
                return entry.actor
        return None

    async def dry_run(self, record: RollbackRecord) -> bool:
        """Record what the plan would have run, touching nothing; False when no longer proposed."""
        if not await self.store.transition(record.id, RollbackState.DRY_RUN, PROPOSED_STATES):
            return False
        svc = self.world().service(record.service)
        target = dataclasses.replace(
            target_from_json(record.target, svc), rollback_id=record.id, reasons=tuple(record.reasons)
        )
        steps = self._steps(record, self.clock())
        plan = await Executor(self.store, steps).describe(target, tuple(s.name for s in record.steps))
        await self.report.about(
            "dry_run",
            record,
            detail={"would_run": plan, "state": "dry_run"},
            summary=f"dry run: rollback of {record.service} would have run now; nothing touched",
        )
        return True


def _undone_ids(record: RollbackRecord) -> list[str]:
    """The ids of the deployments ``record`` undoes: its own, or each group member's it names."""
    group = group_of_record(record)
    if group is None:
        return [record.deployment_id]
    return [str(m["deployment_id"]) for m in group.get("members") or () if m.get("deployment_id")]
