"""The daemon: sources, rules and rollbacks put together around deployments.

A deployment is watched from its start for its window. Every poll of a source
feeds the rules that read it; a rule's transitions are saved (with its timers,
so a restart resumes them), audited and, when a rollback rule fires, decided
on (``watchdogd.decisions``): a proposal waits out its veto window, or an
operator's approval, then its plan runs through the journaled executor.
Everything a restart needs is in the store; on start, open deployments,
pending proposals and interrupted plans are picked up where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, Counter

from watchdogd import __version__
from watchdogd.clock import JUMP, SteadyClock
from watchdogd.clock import now as steady
from watchdogd.config.models import Config, HttpSource, RuleConfig, ServiceConfig
from watchdogd.decisions import Fire, Policy, due, on_fire, proposal
from watchdogd.errors import RuleError, StoreError, WatchdogError
from watchdogd.leader import POLL, Election, Solo, election_for
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.notify import Event, Notifier
from watchdogd.rollback.base import ContainerSnapshot, Migration, RollbackTarget, Step
from watchdogd.rollback.journal import RollbackRecord, RollbackState
from watchdogd.rollback.plan import Executor, target_from_json, target_to_json
from watchdogd.rollback.sql import SqlStep
from watchdogd.rollback.steps import RedisPurgeStep, VerifyStep, WebhookStep
from watchdogd.rules import (
    EvalState,
    Rule,
    baseline_mean,
    compile_rule,
    dump_state,
    evaluate,
    load_state,
    start,
)
from watchdogd.sources import Measure, build_source
from watchdogd.sources.alertmanager import AlertmanagerAlerts, WebhookPayload
from watchdogd.sources.base import Source
from watchdogd.sources.exec import ExecCommand
from watchdogd.sources.http import HttpProbe
from watchdogd.sources.schedule import SourceJobs
from watchdogd.store import Deployment, StateStore, open_store
from watchdogd.telemetry import Metrics

log = structlog.get_logger("watchdogd")

SYSTEM = "watchdogd"
"""The actor of automatic decisions in the audit trail."""
TICK = 0.5
STORE_RETRY = 2.0
"""Seconds between two attempts at a decision the store refused to record (disk full, read-only)."""


@dataclass(frozen=True)
class RuleRun:
    """One rule of one service, compiled, with what it asks of its source."""

    service: str
    config: RuleConfig
    rule: Rule
    measure: Measure


@dataclass
class Live:
    """An open deployment in memory: its record and each rule's state."""

    deployment: Deployment
    states: dict[str, EvalState] = field(default_factory=dict)


class Conflict(WatchdogError):
    """An operator's request that the current state refuses (HTTP 409)."""


class NotFound(WatchdogError):
    """No such deployment or rollback (HTTP 404)."""


class Invalid(WatchdogError):
    """A request that names something the config does not have (HTTP 422)."""


class Daemon:
    """The whole of watchdogd in one process; ``start`` and ``stop`` bracket it."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = steady,
        docker_client: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, __version__)
        self.config_reloads = Counter(
            "watchdogd_config_reloads",
            "Config reloads (SIGHUP), by result: applied, or refused (the old config keeps running).",
            ["result"],
            registry=self.registry,
        )
        self._docker = docker_client
        self.store: StateStore | None = None
        self.ready = False
        self.problem = "starting"
        self.runs: dict[str, list[RuleRun]] = {}
        self.live: dict[str, Live] = {}
        """Open deployments by service."""
        self.known: dict[str, ContainerSnapshot] = {}
        """The last container seen for each service."""
        self.before: dict[str, ContainerSnapshot] = {}
        """For each service, the last container seen with another image than the current one."""
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._executing: set[str] = set()
        """Rollbacks whose plan runs in this process: one run per rollback, however it was asked for."""
        self.election: Election = Solo()
        """Only the leader evaluates, decides and executes; the others serve the API."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._deploying = asyncio.Lock()
        self._store_failing = False
        self._drift = 0.0
        """The wall clock's drift from the steady clock when last looked at."""
        self._events_thread: threading.Thread | None = None
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        """Called with every event (kind, data): the API's event stream subscribes here."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self.store = await open_store(config.state.url.secret(), clock=self.clock)
        self.election = election_for(config.state.url.secret(), getattr(self.store, "schema", None))
        self.session = aiohttp.ClientSession()
        self.scheduler = AsyncIOScheduler()
        self.scheduler.start()
        self.jobs = SourceJobs(self.scheduler, self.metrics, wall=self.clock)
        self.notifier = Notifier(config.notify, self.metrics)
        self.notifier.start()
        self._build_rules()
        await self._schedule_sources()
        if await self.election.campaign():
            await self._lead()
        else:
            log.info("following", reason="another replica leads")
            await self._sync()
        self.metrics.leader.set(1 if self.election.leading else 0)
        if not isinstance(self.election, Solo):
            self._spawn(self._every(POLL, self._campaign, "election"), "election")
        self._spawn(self._every(TICK, self._tick, "ticker"), "ticker")  # window ends, remaining gauge
        if any(s.container for s in config.services.values()):
            self._spawn(self._watch_docker(), "docker-events")
        self.ready = True
        self.problem = ""
        self.metrics.build_info.labels(__version__).set(1)
        log.info("started", services=len(config.services), sources=len(config.sources))

    async def stop(self, deadline: float = 30.0) -> None:
        """Stop polling, let a running rollback step finish (or leave it journaled), close."""
        self._stopping = True
        self.ready = False
        self.problem = "stopping"
        for timer in self._timers.values():
            timer.cancel()
        executing = [t for t in self._tasks if t.get_name().startswith("execute:")]
        if executing:
            log.info("waiting_for_rollbacks", count=len(executing))
            await asyncio.wait(executing, timeout=deadline)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.jobs.close()
            self.scheduler.shutdown(wait=False)
        await self.notifier.close(timeout=min(5.0, deadline))
        await self.session.close()
        with contextlib.suppress(Exception):
            await self.election.resign()
        if self.store is not None:
            await self.store.aclose()
        log.info("stopped")

    def _spawn(self, work: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None and not self._stopping:
                log.error("task_died", task=name, error=repr(finished.exception()))

        task.add_done_callback(done)
        return task

    def _store_failed(self, exc: StoreError) -> None:
        """Say it once (log, readyz) and keep guarding from memory until the store takes writes again."""
        if self._store_failing:
            return
        self._store_failing = True
        log.error("store_failing", error=str(exc), guarding="from memory")
        if not self._stopping:
            self.ready = False
            self.problem = f"state store failing, guarding from memory: {exc}"

    def _store_recovered(self) -> None:
        if not self._store_failing:
            return
        self._store_failing = False
        log.info("store_recovered")
        if not self._stopping:
            self.ready = True
            self.problem = ""

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener(kind, data)

    async def reload(self, config: Config) -> None:
        """Apply a new (already checked) config; rules whose config is unchanged keep their state."""
        old = self.config
        await self.jobs.close()
        self.config = config
        self._build_rules()
        for service in list(self.live):
            if service not in config.services:
                self.live.pop(service)
                continue
            before = {r.name: r for r in old.services[service].rules} if service in old.services else {}
            after = {r.name: r for r in config.services[service].rules}
            live = self.live[service]
            for name in list(live.states):
                if before.get(name) != after.get(name):
                    del live.states[name]
        if config.notify != old.notify:
            await self.notifier.close(timeout=2.0)
            self.notifier = Notifier(config.notify, self.metrics)
            self.notifier.start()
        await self._schedule_sources()
        for service in self.live:
            self._arm_commands(service)
        self.config_reloads.labels("applied").inc()
        log.info("reloaded", services=len(config.services), sources=len(config.sources))

    def refuse_reload(self, problems: list[str]) -> None:
        self.config_reloads.labels("refused").inc()
        log.error("reload_refused", problems=problems)

    # --- sources and rules -----------------------------------------------------------------

    def _build_rules(self) -> None:
        self.runs = {
            name: [RuleRun(name, rc, compile_rule(rc), Measure.of(rc)) for rc in service.rules]
            for name, service in self.config.services.items()
        }

    async def _schedule_sources(self) -> None:
        config = self.config
        for source_name, source_config in config.sources.items():
            users = [
                (svc, run)
                for svc, runs in self.runs.items()
                for run in runs
                if run.config.source == source_name
            ]
            if not users:
                continue
            intervals = [self._service(svc).interval or config.defaults.interval for svc, _ in users]
            interval = source_config.interval or min(intervals)
            keep = max((run.rule.baseline_before or 0.0) for _, run in users)
            source = build_source(source_name, source_config, self.session)
            if isinstance(source, ExecCommand):
                source.gate = lambda: self.election.leading  # a smoke test runs on the leader only
            self.jobs.add(source, interval, source_config.timeout, keep)
            for service, run in users:
                self.jobs.subscribe(source_name, (service, run.rule.name), [run.measure], self._callback(run))

    def _callback(self, run: RuleRun) -> Callable[[str, Mapping[Measure, Sample]], Awaitable[None]]:
        async def on_poll(_: str, samples: Mapping[Measure, Sample]) -> None:
            await self._evaluate(run, samples[run.measure])

        return on_poll

    def _service(self, name: str) -> ServiceConfig:
        return self.config.services[name]

    def _policy(self, service: str, deployment: Deployment) -> Policy:
        svc, defaults = self._service(service), self.config.defaults
        mode = svc.mode or defaults.mode
        if deployment.data.get("sql_policy") == "approve" and mode == "auto":
            mode = "manual"
        return Policy(
            mode=mode,
            grace=svc.grace if svc.grace is not None else defaults.grace,
            approval_timeout=svc.approval_timeout or defaults.approval_timeout,
            on_approval_timeout=svc.on_approval_timeout or defaults.on_approval_timeout,
        )

    async def _evaluate(self, run: RuleRun, sample: Sample) -> None:
        labels = (run.service, run.rule.name)
        if sample.value is not None:
            self.metrics.rule_value.labels(*labels).set(sample.value)
        if not self.election.leading:
            return  # the leader evaluates and saves the states; a follower reads them
        live = self.live.get(run.service)
        if live is None or not live.deployment.open or sample.time < live.deployment.started_at:
            return
        # No await between reading and replacing the state: evaluations of other rules
        # interleave freely, and one rule's polls never overlap (one job per source).
        state = live.states.get(run.rule.name) or self._start_rule(run, live.deployment)
        try:
            state, transitions = evaluate(run.rule, state, sample, sample.time)
        except RuleError as exc:
            log.warning("rule_error", service=run.service, rule=run.rule.name, error=str(exc))
            return
        live.states[run.rule.name] = state
        assert self.store is not None
        try:
            await self.store.save_rule_state(live.deployment.id, run.rule.name, dump_state(state))
        except StoreError as exc:
            self._store_failed(exc)  # the state lives on in memory; the next evaluation saves it again
        else:
            self._store_recovered()
        self.metrics.rule_state.labels(*labels).set(state.state.metric_value)
        self.metrics.rule_evaluations.labels(*labels, state.state.value).inc()
        for transition in transitions:
            await self._on_transition(run, live.deployment, transition, state)

    def _start_rule(self, run: RuleRun, deployment: Deployment) -> EvalState:
        baseline = None
        if run.rule.baseline_before is not None:
            since = deployment.started_at - run.rule.baseline_before
            history = self.jobs.history(run.config.source, run.measure, since)
            baseline = baseline_mean(history, deployment.started_at, run.rule.baseline_before)
        return start(run.rule, deployment.started_at, baseline)

    async def _on_transition(
        self, run: RuleRun, deployment: Deployment, t: Transition, state: EvalState
    ) -> None:
        assert self.store is not None
        detail = {
            "rule": run.rule.name,
            "from": t.from_state.value,
            "to": t.to_state.value,
            "value": _num(t.value),
            "values": [_num(v) for v in t.values],
            "threshold": _num(t.threshold),
            "reason": t.reason,
            "at": t.at,
        }
        log.info("rule_state", service=run.service, **detail)
        try:
            await self.store.audit(SYSTEM, "rule_state", detail, deployment.id)
        except StoreError as exc:
            self._store_failed(exc)  # a missing audit line must not stop a rule from firing
        self._emit("rule_state", {"service": run.service, "deployment_id": deployment.id, **detail})
        if t.fired:
            await self._on_fire(run, deployment, t, detail)
        elif t.from_state is RuleState.FIRING and run.rule.action == "notify":
            self.notifier.notify(
                self._event("rule_resolved", deployment, None, f"{run.rule.name} resolved", detail)
            )

    # --- decisions ---------------------------------------------------------------------------

    async def _on_fire(
        self, run: RuleRun, deployment: Deployment, t: Transition, reason: dict[str, Any]
    ) -> None:
        assert self.store is not None
        policy = self._policy(run.service, deployment)
        muted = await self.store.muted_until(run.service, run.rule.name)
        fire = Fire(run.rule.name, run.rule.action, run.rule.immediate, t.at, muted)
        existing = await self.store.for_deployment(deployment.id)
        verdict = on_fire(policy, fire, deployment.state == "watching", existing is not None)
        reason = {**reason, "severity": run.rule.severity, **self._source_output(run.config.source)}
        if verdict == "ignore":
            await self.store.audit(SYSTEM, "fire_muted", {**reason, "muted_until": muted}, deployment.id)
            return
        if verdict == "notify":
            summary = f"{run.rule.name} is firing: {t.reason}"
            self.notifier.notify(self._event("rule_firing", deployment, None, summary, reason))
            return
        if verdict == "join":
            assert existing is not None
            await self.store.add_reason(existing.id, reason)
            await self.store.audit(SYSTEM, "reason_added", reason, deployment.id, existing.id)
            return
        made = proposal(policy, fire)
        await self.propose(deployment, reason, made.state, made.execute_at, dry_run=made.dry_run)

    async def propose(
        self,
        deployment: Deployment,
        reason: dict[str, Any],
        state: str,
        execute_at: float | None,
        dry_run: bool = False,
        actor: str = SYSTEM,
    ) -> RollbackRecord:
        assert self.store is not None
        # the freshest record: migrations registered a moment ago belong in the plan
        deployment = await self.store.deployment(deployment.id) or deployment
        service = self._service(deployment.service)
        steps = list(service.rollback.steps)
        if deployment.data.get("sql_policy") == "refuse" and "sql" in steps:
            steps.remove("sql")
        target = self._target(deployment, [reason])
        data = target_to_json(target)
        data["dry_run"] = dry_run
        record = await self.store.create(
            deployment.id,
            deployment.service,
            steps,
            [reason],
            data,
            state,  # type: ignore[arg-type]
            execute_at,
        )
        self.metrics.rollback_proposals.labels(deployment.service, "proposed").inc()
        await self.store.audit(
            actor,
            "proposed",
            {"reasons": record.reasons, "execute_at": execute_at, "state": state, "steps": steps},
            deployment.id,
            record.id,
        )
        summary = f"rollback of {deployment.service} proposed: {_why(record.reasons)}"
        fields = {
            "reasons": record.reasons,
            "execute_at": execute_at,
            "mode": "dry-run" if dry_run else state,
        }
        self.notifier.notify(self._event("proposal", deployment, record.id, summary, fields))
        self._emit("proposal", {"rollback_id": record.id, "deployment_id": deployment.id, "state": state})
        log.warning(
            "rollback_proposed", service=deployment.service, rollback=record.id, execute_at=execute_at
        )
        self._arm(record)
        return record

    def _target(self, deployment: Deployment, reasons: list[dict[str, Any]]) -> RollbackTarget:
        data = deployment.data
        previous = ContainerSnapshot(**data["previous"]) if data.get("previous") else None
        current = ContainerSnapshot(**data["current"]) if data.get("current") else None
        migrations = tuple(
            Migration(m["id"], m["down_sql"], tuple(m.get("verify_sql", ())))
            for m in data.get("migrations", ())
        )
        return RollbackTarget(
            service=deployment.service,
            deployment_id=deployment.id,
            config=self._service(deployment.service),
            previous=previous,
            current=current,
            migrations=migrations,
            fired_rules=tuple(str(r["rule"]) for r in reasons if "rule" in r),
            reason=_why(reasons),
        )

    def _arm(self, record: RollbackRecord) -> None:
        """A timer that acts when the proposal is due (end of the veto window, approval deadline)."""
        old = self._timers.pop(record.id, None)
        if old is not None:
            old.cancel()
        if record.execute_at is None or not self.election.leading:
            return
        delay = max(0.0, record.execute_at - self.clock())

        async def wait() -> None:
            await asyncio.sleep(delay)
            await self._until_stored(lambda _: self._due(record.id))  # meanwhile it stays journaled pending
            self._timers.pop(record.id, None)

        self._timers[record.id] = self._spawn(wait(), f"timer:{record.id}")

    async def _due(self, rollback_id: str) -> None:
        assert self.store is not None
        record = await self.store.get(rollback_id)
        if record is None or record.final:
            return
        deployment = await self.store.deployment(record.deployment_id)
        if deployment is None:
            return
        verdict = due(
            self._policy(deployment.service, deployment), record.state, record.execute_at, self.clock()
        )
        if verdict == "execute":
            await self._launch(record)
        elif verdict == "expire" and await self.store.transition(
            record.id, "vetoed", ("awaiting_approval",), "no approval in time"
        ):
            self.metrics.rollback_proposals.labels(deployment.service, "expired").inc()
            await self.store.audit(
                SYSTEM, "expired", {"reason": "no approval in time"}, deployment.id, record.id
            )

    async def _launch(self, record: RollbackRecord) -> None:
        if record.target.get("dry_run"):
            await self._dry_run(record)
            return
        self._spawn(self._execute(record.id), f"execute:{record.id}")

    async def _dry_run(self, record: RollbackRecord) -> bool:
        assert self.store is not None
        if not await self.store.transition(record.id, "dry_run", ("pending", "awaiting_approval")):
            return False
        deployment = await self.store.deployment(record.deployment_id)
        assert deployment is not None
        target = self._target(deployment, record.reasons)
        plan = await self._executor(deployment.service).describe(target, tuple(s.name for s in record.steps))
        self.metrics.rollback_proposals.labels(deployment.service, "dry_run").inc()
        await self.store.audit(SYSTEM, "dry_run", {"would_run": plan}, deployment.id, record.id)
        summary = f"dry run: rollback of {deployment.service} would have run now; nothing touched"
        self.notifier.notify(
            self._event("rollback_started", deployment, record.id, summary, {"would_run": plan})
        )
        return True

    async def _execute(
        self, rollback_id: str, claimed_from: tuple[RollbackState, ...] = ("pending", "awaiting_approval")
    ) -> None:
        """Run the plan once the rollback is claimed: moved to executing from one of ``claimed_from``.

        Only a resume after a restart, or an approval that claimed it already,
        may start from ``executing``: anything else would run the plan twice.
        """
        if not self.election.leading:
            return  # a follower's approval is picked up by the leader
        # Nothing runs unjournaled: a retry resumes from the journal as a restart would, claimed or not.
        await self._until_stored(
            lambda retry: self._run_plan(rollback_id, (*claimed_from, "executing") if retry else claimed_from)
        )

    async def _until_stored(self, work: Callable[[bool], Awaitable[None]]) -> None:
        """Run ``work`` until the store takes its writes; ``work(True)`` on each retry after a refusal."""
        retry = False
        while True:
            try:
                await work(retry)
                self._store_recovered()
                return
            except StoreError as exc:  # disk full, read-only: said once, tried again every STORE_RETRY
                self._store_failed(exc)
                retry = True
                await asyncio.sleep(STORE_RETRY)

    async def _run_plan(self, rollback_id: str, claimed_from: tuple[RollbackState, ...]) -> None:
        assert self.store is not None
        record = await self.store.get(rollback_id)
        if record is None or record.final:
            return
        deployment = await self.store.deployment(record.deployment_id)
        assert deployment is not None
        if not await self.store.transition(record.id, "executing", claimed_from):
            return
        if rollback_id in self._executing:
            return  # claimed twice in this process (an approval and a resume): it runs once
        self._executing.add(rollback_id)
        try:
            await self._run_claimed(record, deployment)
        finally:
            self._executing.discard(rollback_id)

    async def _run_claimed(self, record: RollbackRecord, deployment: Deployment) -> None:
        assert self.store is not None
        rollback_id = record.id
        await self.store.set_deployment_state(deployment.id, "rolling_back", ("watching", "rolling_back"))
        await self._refresh(deployment.service)
        fired = [float(r["at"]) for r in record.reasons if isinstance(r.get("at"), int | float)]
        if fired:
            self.metrics.detection_latency.observe(max(0.0, self.clock() - min(fired)))
        self.metrics.rollback_proposals.labels(deployment.service, "executed").inc()
        await self.store.audit(
            SYSTEM, "rollback_started", {"reasons": record.reasons}, deployment.id, record.id
        )
        summary = f"rolling back {deployment.service}: {_why(record.reasons)}"
        self.notifier.notify(self._event("rollback_started", deployment, record.id, summary, {}))
        self._emit("rollback", {"rollback_id": record.id, "state": "executing"})
        target = target_from_json(record.target, self._service(deployment.service))
        record = await self.store.get(rollback_id) or record
        done = await self._executor(deployment.service).execute(record, target)
        ok = done.state == "succeeded"
        await self.store.set_deployment_state(
            deployment.id, "rolled_back" if ok else "rollback_failed", ("rolling_back",)
        )
        await self._refresh(deployment.service)
        steps = [{"name": s.name, "state": s.state, "error": s.error} for s in done.steps]
        await self.store.audit(
            SYSTEM,
            "rollback_" + ("succeeded" if ok else "failed"),
            {"steps": steps, "error": done.error},
            deployment.id,
            done.id,
        )
        kind = "rollback_succeeded" if ok else "rollback_failed"
        summary = f"rollback of {deployment.service} " + ("succeeded" if ok else f"failed: {done.error}")
        self.notifier.notify(
            self._event(kind, deployment, done.id, summary, {"steps": steps, "error": done.error})
        )
        self._emit("rollback", {"rollback_id": done.id, "state": done.state})

    def _executor(self, service: str) -> Executor:
        assert self.store is not None
        svc = self._service(service)
        steps: dict[str, Step] = {"sql": SqlStep()}
        if svc.container:
            from watchdogd.rollback.container import ContainerStep

            steps["container"] = ContainerStep(self.docker(), probe=self._health_probe(svc))
        if svc.rollback.redis_purge is not None:
            steps["redis_purge"] = RedisPurgeStep(svc.rollback.redis_purge)
        if svc.rollback.webhook is not None:
            steps["webhook"] = WebhookStep(svc.rollback.webhook)
        probe = self._health_probe(svc)

        async def health(_: RollbackTarget) -> tuple[bool, str]:
            assert probe is not None
            ok = await probe()
            return ok, "health probe passes" if ok else "health probe fails"

        async def rules(target: RollbackTarget) -> tuple[bool, str]:
            live = self.live.get(service)
            states = live.states if live else {}
            bad = [r for r in target.fired_rules if states.get(r) and states[r].state is RuleState.FIRING]
            return (not bad, "fired rules back to ok" if not bad else "still firing: " + ", ".join(bad))

        steps["verify"] = VerifyStep(svc.rollback.verify, health if probe else None, rules, poll=0.5)
        return Executor(self.store, steps, self.metrics)

    def _health_probe(self, svc: ServiceConfig) -> Callable[[], Awaitable[bool]] | None:
        source = self.config.sources.get(svc.health or "")
        if not isinstance(source, HttpSource):
            return None
        probe = HttpProbe(svc.health or "health", source, self.session)
        up = Measure("field", "up")

        async def healthy() -> bool:
            answer = await probe.fetch([up], self.clock())
            return answer[up].value == 1.0

        return healthy

    def _previous_of(self, service: str, current: ContainerSnapshot | None) -> ContainerSnapshot | None:
        """The container that ran before ``current``: the last one seen with another image."""
        if current is None:
            return None
        known = self.known.get(service)
        if known is not None and known.image_id != current.image_id:
            self.before[service] = known
        self.known[service] = current
        before = self.before.get(service)
        return before if before is not None and before.image_id != current.image_id else None

    def docker(self) -> Any:
        if self._docker is None:
            import docker

            self._docker = docker.from_env(timeout=60)
        return self._docker

    # --- operators -------------------------------------------------------------------------------

    async def veto(self, rollback_id: str, actor: str, reason: str, mute_for: float | None) -> RollbackRecord:
        assert self.store is not None
        record = await self._rollback(rollback_id)
        if record.state == "vetoed":
            return record
        if not await self.store.transition(
            record.id, "vetoed", ("pending", "awaiting_approval"), f"vetoed by {actor}: {reason}"
        ):
            current = await self._rollback(rollback_id)
            raise Conflict(f"rollback {rollback_id} is {current.state}: too late to veto")
        timer = self._timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        muted: list[str] = []
        if mute_for:
            for r in record.reasons:
                if "rule" in r:
                    await self.store.mute(record.service, str(r["rule"]), self.clock() + mute_for)
                    muted.append(str(r["rule"]))
        self.metrics.rollback_proposals.labels(record.service, "vetoed").inc()
        await self.store.audit(
            actor,
            "veto",
            {"reason": reason, "mute_for": mute_for, "muted": muted},
            record.deployment_id,
            record.id,
        )
        deployment = await self.store.deployment(record.deployment_id)
        if deployment is not None:
            summary = f"rollback of {record.service} vetoed by {actor}: {reason}"
            self.notifier.notify(
                self._event("veto", deployment, record.id, summary, {"actor": actor, "reason": reason})
            )
        self._emit("veto", {"rollback_id": record.id, "actor": actor})
        return await self._rollback(rollback_id)

    async def approve(self, rollback_id: str, actor: str) -> RollbackRecord:
        assert self.store is not None
        record = await self._rollback(rollback_id)
        if record.state in ("executing", "succeeded", "failed"):
            return record  # approving what already runs is a no-op
        if record.state in ("vetoed", "dry_run"):
            raise Conflict(f"rollback {rollback_id} is {record.state}: it cannot be approved")
        # Claim it here, atomically against a veto: a 200 means it runs, a veto after it gets 409.
        if record.target.get("dry_run"):
            won = await self._dry_run(record)
        else:
            won = await self.store.transition(record.id, "executing", ("pending", "awaiting_approval"))
        if not won:
            current = await self._rollback(rollback_id)
            if current.state in ("executing", "succeeded", "failed"):
                return current
            raise Conflict(f"rollback {rollback_id} is {current.state}: it cannot be approved")
        await self.store.audit(actor, "approve", {}, record.deployment_id, record.id)
        deployment = await self.store.deployment(record.deployment_id)
        if deployment is not None:
            self.notifier.notify(
                self._event(
                    "approval", deployment, record.id, f"rollback approved by {actor}", {"actor": actor}
                )
            )
        timer = self._timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        if not record.target.get("dry_run"):
            self._spawn(self._execute(record.id, ("executing",)), f"execute:{record.id}")
        return await self._rollback(rollback_id)

    async def ack(self, rollback_id: str, actor: str) -> RollbackRecord:
        assert self.store is not None
        record = await self._rollback(rollback_id)
        await self.store.audit(actor, "ack", {}, record.deployment_id, record.id)
        return record

    async def manual_rollback(self, deployment_id: str, actor: str, reason: str) -> RollbackRecord:
        assert self.store is not None
        deployment = await self.store.deployment(deployment_id)
        if deployment is None:
            raise NotFound(f"no deployment {deployment_id}")
        existing = await self.store.for_deployment(deployment_id)
        if existing is not None:
            return existing
        if deployment.state != "watching":
            raise Conflict(f"deployment {deployment_id} is {deployment.state}")
        policy = self._policy(deployment.service, deployment)
        now = self.clock()
        state = "awaiting_approval" if policy.mode == "manual" else "pending"
        execute_at = None if state == "awaiting_approval" else now + policy.grace
        detail = {"operator": actor, "reason": reason, "at": now}
        return await self.propose(
            deployment, detail, state, execute_at, dry_run=policy.mode == "dry-run", actor=actor
        )

    async def promote(self, deployment_id: str, actor: str) -> Deployment:
        assert self.store is not None
        deployment = await self.store.deployment(deployment_id)
        if deployment is None:
            raise NotFound(f"no deployment {deployment_id}")
        if deployment.state == "promoted":
            return deployment
        existing = await self.store.for_deployment(deployment_id)
        if existing is not None and existing.state in ("pending", "awaiting_approval", "executing"):
            raise Conflict(f"deployment {deployment_id} has a rollback {existing.state}: veto it first")
        if not await self.store.set_deployment_state(deployment_id, "promoted", ("watching",)):
            raise Conflict(f"deployment {deployment_id} is {deployment.state}")
        unverified = [r["name"] for r in self.rule_view(deployment) if r["state"] == "no_data"]
        await self.store.audit(actor, "promoted", {"unverified_rules": unverified}, deployment_id)
        await self._refresh(deployment.service)
        self.notifier.notify(
            self._event(
                "promotion", deployment, None, _promoted(deployment.service, unverified), {"actor": actor}
            )
        )
        self._emit("deployment", {"deployment_id": deployment_id, "state": "promoted"})
        promoted = await self.store.deployment(deployment_id)
        assert promoted is not None
        return promoted

    async def rehearse(self, deployment_id: str, actor: str) -> dict[str, Any]:
        """Runs the deployment's down SQL and verify queries in a transaction, then rolls it back."""
        assert self.store is not None
        deployment = await self.store.deployment(deployment_id)
        if deployment is None:
            raise NotFound(f"no deployment {deployment_id}")
        if deployment.service not in self.config.services:
            raise Invalid(f"service '{deployment.service}' is no longer in the config")
        result = await SqlStep().rehearse(self._target(deployment, []))
        outcome = {"status": result.status, "detail": result.detail}
        await self.store.audit(actor, "rehearsal", outcome, deployment_id)
        return {"deployment_id": deployment_id, **outcome}

    async def _rollback(self, rollback_id: str) -> RollbackRecord:
        assert self.store is not None
        record = await self.store.get(rollback_id)
        if record is None:
            raise NotFound(f"no rollback {rollback_id}")
        return record

    # --- deployments ---------------------------------------------------------------------------

    async def register(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        migrations: list[dict[str, Any]],
        window: float | None,
        rehearse: bool,
        actor: str,
    ) -> tuple[Deployment, dict[str, Any]]:
        """A deployment from the API; it completes one picked up from Docker for the same image."""
        async with self._deploying:  # one at a time against Docker events, or one would supersede the other
            return await self._register(service, image, previous_image, migrations, window, rehearse, actor)

    async def _register(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        migrations: list[dict[str, Any]],
        window: float | None,
        rehearse: bool,
        actor: str,
    ) -> tuple[Deployment, dict[str, Any]]:
        assert self.store is not None
        if service not in self.config.services:
            raise Invalid(
                f"no service '{service}' in the config (services: {', '.join(self.config.services)})"
            )
        svc = self._service(service)
        live = self.live.get(service)
        report: dict[str, Any] = {}
        running = await self._capture(svc.container) if svc.container else None
        noticed = (live.deployment.data.get("current") or {}) if live is not None else {}
        same_image = image is None or (live is not None and live.deployment.image == image)
        if running is not None and running.image_id and running.image_id == noticed.get("image_id"):
            same_image = True  # the same image under another tag
        if (
            live is not None
            and live.deployment.state == "watching"
            and live.deployment.data.get("origin") == "docker"
            and same_image
        ):
            completed = {**live.deployment.data, "migrations": migrations, "origin": "docker+api"}
            report = await self._check_migrations(live.deployment, completed, rehearse)
            await self.store.update_deployment(live.deployment.id, completed)
            await self.store.audit(
                actor,
                "deployment_completed",
                {"migrations": [m["id"] for m in migrations]},
                live.deployment.id,
            )
            await self._refresh(service)
            return self.live[service].deployment, report
        current = running
        previous = self._previous_of(service, current)
        if previous is None and previous_image:
            previous = ContainerSnapshot(svc.container or service, previous_image, "", {})
        data: dict[str, Any] = {
            "origin": "api",
            "previous": _asdict(previous),
            "current": _asdict(current),
            "migrations": migrations,
        }
        now = self.clock()
        length = window or svc.window or self.config.defaults.window
        deployment = await self.store.add_deployment(
            service,
            image or (current.image if current else None),
            previous_image or (previous.image if previous else None),
            now,
            length,
            data,
        )
        report = await self._check_migrations(deployment, data, rehearse)
        await self.store.update_deployment(deployment.id, data)
        await self.store.audit(
            actor,
            "deployment",
            {
                "image": deployment.image,
                "previous_image": deployment.previous_image,
                "migrations": [m["id"] for m in migrations],
                **report,
            },
            deployment.id,
        )
        await self._refresh(service)
        self._emit("deployment", {"deployment_id": deployment.id, "service": service, "state": "watching"})
        return self.live[service].deployment, report

    async def _check_migrations(
        self, deployment: Deployment, data: dict[str, Any], rehearse: bool
    ) -> dict[str, Any]:
        svc = self._service(deployment.service)
        if not data.get("migrations") or svc.database is None:
            return {}
        target = self._target(Deployment(**{**_dataclass_dict(deployment), "data": data}), [])
        step = SqlStep()
        report: dict[str, Any] = {}
        try:
            assessment = await step.assess(target)
        except Exception as exc:  # the database's answer, whatever it is, must not lose the deployment
            log.warning("assessment_failed", deployment=deployment.id, error=str(exc))
            data["sql_policy"] = "approve"
            report["sql_policy"] = "approve"
            report["assessment_error"] = (
                f"could not assess the down SQL ({type(exc).__name__}): an operator approves"
            )
        else:
            data["sql_policy"] = assessment.action
            report["sql_policy"] = assessment.action
            report["destroys"] = [f"{f}" for f in assessment.findings]
        if rehearse:
            result = await step.rehearse(target)
            report["rehearsal"] = {"status": result.status, "detail": result.detail}
        return report

    async def _capture(self, name: str) -> ContainerSnapshot | None:
        from watchdogd.rollback.container import capture

        try:
            return await capture(self.docker(), name)
        except Exception as exc:  # no engine, no container: the deployment is still watched
            log.warning("capture_failed", container=name, error=str(exc))
            return None

    async def _refresh(self, service: str) -> None:
        """Reload the service's open deployment from the store (the one source of truth)."""
        assert self.store is not None
        open_ones = [d for d in await self.store.deployments(open_only=True) if d.service == service]
        if not open_ones:
            self.live.pop(service, None)
            return
        newest = open_ones[0]
        live = self.live.get(service)
        if live is not None and live.deployment.id == newest.id:
            live.deployment = newest
            return
        self.live[service] = Live(newest, await self._stored_states(newest.id))
        self._arm_commands(service)

    async def _resume(self) -> None:
        assert self.store is not None
        for deployment in await self.store.deployments(open_only=True):
            await self._refresh(deployment.service)
        for record in await self.store.in_states(("pending", "awaiting_approval")):
            self._arm(record)
        for record in await self.store.unfinished():
            log.warning("rollback_resuming", rollback=record.id)
            self._spawn(self._execute(record.id, ("executing",)), f"execute:{record.id}")
        for name, svc in self.config.services.items():
            if svc.container and name not in self.known:
                snapshot = await self._capture(svc.container)
                if snapshot is not None:
                    self.known[name] = snapshot

    async def _lead(self) -> None:
        """This replica leads from now: it picks everything up from the store, as the last leader left it."""
        self.metrics.leader.set(1)
        log.info("leading")
        self.live.clear()
        await self._resume()

    def _step_down(self) -> None:
        """The lock is gone: another replica may lead now, so stop deciding and executing here."""
        self.metrics.leader.set(0)
        for timer in list(self._timers.values()):
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            if task.get_name().startswith("execute:"):
                task.cancel()  # journaled: the next leader resumes the step that was running
        log.warning(
            "following", reason="the leader lock is gone (said above); timers and running plans stopped"
        )

    async def _campaign(self) -> None:
        """Ask for the leader lock (a follower) or check it is still held (the leader)."""
        was = self.election.leading
        leading = await self.election.campaign()
        if leading and not was:
            await self._lead()
        elif was and not leading:
            self._step_down()
        await self._sync()

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``work`` every ``seconds``; a failure (a store hiccup) is said once and does not end it."""
        failing = False
        while True:
            try:
                await work()
                if failing:
                    log.info(f"{name}_recovered")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.error(f"{name}_failing", error=f"{type(exc).__name__}: {exc}")
                failing = True
            await asyncio.sleep(seconds)

    async def _sync(self) -> None:
        """Catch up with the shared store: what another replica registered, voted or claimed."""
        assert self.store is not None
        open_now = {d.service for d in await self.store.deployments(open_only=True)}
        for service in open_now | set(self.live):
            await self._refresh(service)
        if not self.election.leading:
            for live in self.live.values():
                live.states = await self._stored_states(live.deployment.id)
            return
        for record in await self.store.in_states(("pending", "awaiting_approval")):
            if record.id not in self._timers:
                self._arm(record)
        for record in await self.store.unfinished():
            if record.id not in self._executing:
                self._spawn(self._execute(record.id, ("executing",)), f"execute:{record.id}")

    async def _stored_states(self, deployment_id: str) -> dict[str, EvalState]:
        assert self.store is not None
        states = {}
        for rule, raw in (await self.store.rule_states(deployment_id)).items():
            with contextlib.suppress(RuleError):
                states[rule] = load_state(raw)
        return states

    def _watch_wall_clock(self) -> None:
        """Say when the wall clock jumps; windows keep their steady time, polling starts again now."""
        if not isinstance(self.clock, SteadyClock):
            return
        drift = self.clock.drift()
        self.metrics.clock_drift.set(drift)
        if abs(drift - self._drift) >= JUMP:
            log.warning(
                "wall_clock_jumped",
                by=round(drift - self._drift, 3),
                drift=round(drift, 3),
                kept="windows, timers and stored times follow the steady clock",
            )
            self._drift = drift
            self.jobs.reschedule()

    async def _tick(self) -> None:
        assert self.store is not None
        self._watch_wall_clock()
        now = self.clock()
        for service, live in list(self.live.items()):
            deployment = live.deployment
            remaining = max(0.0, deployment.window_ends_at - now)
            self.metrics.window_remaining.labels(service).set(remaining)
            if deployment.state == "watching" and remaining <= 0 and self.election.leading:
                existing = await self.store.for_deployment(deployment.id)
                if existing is None or existing.state in ("vetoed", "dry_run"):
                    with contextlib.suppress(Conflict, NotFound):
                        await self.promote(deployment.id, SYSTEM)

    async def _watch_docker(self) -> None:
        """Deployments noticed from Docker: a service's container started with another image."""
        loop = asyncio.get_running_loop()
        names = {svc.container: name for name, svc in self.config.services.items() if svc.container}
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                try:
                    client = self.docker()
                    for event in client.events(decode=True, filters={"type": "container", "event": "start"}):
                        if stop.is_set():
                            return
                        name = (event.get("Actor") or {}).get("Attributes", {}).get("name")
                        if name in names:
                            asyncio.run_coroutine_threadsafe(self._container_started(names[name]), loop)
                except Exception as exc:
                    log.warning("docker_events_lost", error=str(exc))
                    stop.wait(2.0)

        thread = threading.Thread(target=follow, name="docker-events", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            stop.set()

    async def _container_started(self, service: str) -> None:
        async with self._deploying:
            await self._noticed(service)

    async def _noticed(self, service: str) -> None:
        assert self.store is not None
        svc = self._service(service)
        assert svc.container is not None
        snapshot = await self._capture(svc.container)
        if snapshot is None:
            return
        seen = self.known.get(service)
        changed = seen is not None and seen.image_id != snapshot.image_id
        previous = self._previous_of(service, snapshot)
        live = self.live.get(service)
        if not changed or (live is not None and live.deployment.state == "rolling_back"):
            return  # the rollback's own container
        if (
            live is not None
            and (live.deployment.data.get("current") or {}).get("image_id") == snapshot.image_id
        ):
            return  # already registered through the API
        if previous is None or not self.election.leading:
            return
        latest = await self.store.deployments(limit=1)
        if latest and latest[0].service == service and latest[0].state in ("rolled_back", "rollback_failed"):
            prior = latest[0].data.get("previous") or {}
            if prior.get("image_id") == snapshot.image_id:
                return
        now = self.clock()
        length = svc.window or self.config.defaults.window
        data: dict[str, Any] = {
            "origin": "docker",
            "previous": _asdict(previous),
            "current": _asdict(snapshot),
            "migrations": [],
        }
        deployment = await self.store.add_deployment(
            service, snapshot.image, previous.image, now, length, data
        )
        await self.store.audit(
            SYSTEM,
            "deployment",
            {"image": snapshot.image, "previous_image": previous.image, "origin": "docker"},
            deployment.id,
        )
        log.info("deployment_noticed", service=service, image=snapshot.image, previous=previous.image)
        self._emit("deployment", {"deployment_id": deployment.id, "service": service, "state": "watching"})
        await self._refresh(service)

    # --- pushed and deploy-started sources ----------------------------------------------------------

    def alertmanager(self, payload: WebhookPayload) -> int:
        """Hand an Alertmanager notification to every alertmanager source; how many took it."""
        taken = 0
        for name in self.config.sources:
            source = self._polled(name)
            if isinstance(source, AlertmanagerAlerts):
                source.receive(payload)
                taken += 1
                self._spawn(
                    self.jobs.poll_now(name), f"poll:{name}"
                )  # evaluate now, not at the next interval
        return taken

    def _arm_commands(self, service: str) -> None:
        """A deploy of ``service`` is watched: its after_deploy commands run now, then every interval."""
        for name in {run.config.source for run in self.runs.get(service, [])}:
            source = self._polled(name)
            if isinstance(source, ExecCommand) and not source.armed:
                source.arm()
                self._spawn(self.jobs.poll_now(name), f"poll:{name}")

    def _source_output(self, name: str) -> dict[str, str]:
        """The last output of an exec source, for a rollback's reasons and the audit."""
        source = self._polled(name)
        if isinstance(source, ExecCommand) and source.last_output:
            return {"output": source.last_output}
        return {}

    def _polled(self, name: str) -> Source | None:
        """The source ``name`` as it is polled; None before the daemon started or for an unused one."""
        jobs: SourceJobs | None = getattr(self, "jobs", None)  # set by start()
        job = jobs.jobs.get(name) if jobs is not None else None
        return job.poller.source if job is not None else None

    # --- views -----------------------------------------------------------------------------------

    def _event(
        self, kind: str, deployment: Deployment, rollback_id: str | None, summary: str, fields: dict[str, Any]
    ) -> Event:
        return Event(
            kind=kind,  # type: ignore[arg-type]
            service=deployment.service,
            deployment_id=deployment.id,
            rollback_id=rollback_id,
            at=self.clock(),
            summary=summary,
            fields=fields,
        )

    def rule_view(self, deployment: Deployment) -> list[dict[str, Any]]:
        live = self.live.get(deployment.service)
        states = live.states if live and live.deployment.id == deployment.id else {}
        out = []
        for run in self.runs.get(deployment.service, []):
            state = states.get(run.rule.name)
            out.append(
                {
                    "name": run.rule.name,
                    "state": state.state.value if state else RuleState.NO_DATA.value,
                    "value": _num(state.value) if state else None,
                    "since": state.since if state else None,
                    "reason": state.reason if state else "not evaluated yet",
                }
            )
        return out


def _num(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _why(reasons: list[dict[str, Any]]) -> str:
    parts = []
    for r in reasons:
        if "rule" in r:
            parts.append(f"{r['rule']}: {r.get('reason', '')}")
        else:
            parts.append(f"{r.get('operator', 'operator')}: {r.get('reason', '')}")
    return "; ".join(parts)


def _asdict(snapshot: ContainerSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "name": snapshot.name,
        "image": snapshot.image,
        "image_id": snapshot.image_id,
        "config": snapshot.config,
    }


def _dataclass_dict(deployment: Deployment) -> dict[str, Any]:
    return {name: getattr(deployment, name) for name in Deployment.__dataclass_fields__}


def _promoted(service: str, unverified: list[str]) -> str:
    if not unverified:
        return f"{service} promoted: the window ended with no rule firing"
    return f"{service} promoted, but never verified by: {', '.join(unverified)} (no data)"
