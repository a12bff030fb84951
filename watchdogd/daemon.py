"""The composition root: opens the store, the sources and ``watchdogd.watch``'s parts, and runs them.

``await Daemon.open(config, store=..., clock=..., docker=...)`` builds the
whole daemon (nothing in it is filled in later) and starts its supervised
tasks; ``close`` stops them within a deadline, letting a running rollback
step finish. A reload builds the new world (rules compiled, sources made)
before swapping it in; a config that cannot be built keeps the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, Counter

from watchdogd import __version__
from watchdogd.clock import JUMP, Clock, SteadyClock
from watchdogd.clock import now as steady
from watchdogd.config.models import Config
from watchdogd.errors import WatchdogError
from watchdogd.leader import POLL, Election, election_for
from watchdogd.notify import Notifier
from watchdogd.rollback.base import Step
from watchdogd.sources import build_source
from watchdogd.sources.alertmanager import AlertmanagerAlerts, WebhookPayload
from watchdogd.sources.base import Source
from watchdogd.sources.exec import ExecCommand
from watchdogd.sources.schedule import SourceJobs
from watchdogd.store import Store, open_store
from watchdogd.telemetry import Metrics
from watchdogd.watch.deployments import Containers, Deployments
from watchdogd.watch.evaluation import Evaluator
from watchdogd.watch.execution import Executions, Plans
from watchdogd.watch.leadership import Leadership
from watchdogd.watch.live import Watched
from watchdogd.watch.operators import Operators
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.report import Reporter
from watchdogd.watch.tasks import Health, Supervisor, every
from watchdogd.watch.world import Current, World

log = structlog.get_logger("watchdogd")

TICK = 0.5
"""Seconds between two looks at window ends, the remaining-time gauge and the wall clock."""
SourceFactory = Callable[[str, Any, aiohttp.ClientSession], Source]


class Polled:
    """The sources as polled: what a deploy arms (exec commands) and what a proposal quotes (their output)."""

    def __init__(self, jobs: SourceJobs, world: Current, supervisor: Supervisor) -> None:
        self.jobs = jobs
        self.world = world
        self.supervisor = supervisor

    def source(self, name: str) -> Source | None:
        job = self.jobs.jobs.get(name)
        return job.poller.source if job is not None else None

    def output(self, name: str) -> str | None:
        source = self.source(name)
        return (source.last_output or None) if isinstance(source, ExecCommand) else None

    def arm_commands(self, service: str) -> None:
        """A deploy of ``service`` is watched: its after_deploy commands run now, then every interval."""
        for name in {run.config.source for run in self.world().runs.get(service, ())}:
            source = self.source(name)
            if isinstance(source, ExecCommand) and not source.armed:
                source.arm()
                self.supervisor.job(f"poll:{name}", self.jobs.poll_now(name))


class Daemon:
    """watchdogd in one process. Build it with ``await Daemon.open(config)``."""

    def __init__(
        self,
        *,
        world: Current,
        clock: Clock,
        store: Store,
        registry: CollectorRegistry,
        metrics: Metrics,
        election: Election,
        session: aiohttp.ClientSession,
        scheduler: AsyncIOScheduler,
        jobs: SourceJobs,
        polled: Polled,
        notifier: Notifier,
        supervisor: Supervisor,
        health: Health,
        report: Reporter,
        watched: Watched,
        proposer: Proposer,
        evaluator: Evaluator,
        deployments: Deployments,
        operators: Operators,
        leadership: Leadership,
        make_source: SourceFactory,
        polling: bool,
    ) -> None:
        # Called by ``open`` only: every part is built before the daemon exists.
        self.current = world
        self.clock = clock
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.election = election
        self.session = session
        self.scheduler = scheduler
        self.jobs = jobs
        self.polled = polled
        self.notifier = notifier
        self.supervisor = supervisor
        self.health = health
        self.report = report
        self.watched = watched
        self.proposer = proposer
        self.evaluator = evaluator
        self.deployments = deployments
        self.operators = operators
        self.leadership = leadership
        self._make_source = make_source
        self._polling = polling
        self._drift = 0.0
        self.reloads = Counter(
            "watchdogd_config_reloads",
            "Config reloads (SIGHUP), by result: applied, or refused (the old config keeps running).",
            ["result"],
            registry=registry,
        )

    @property
    def world(self) -> World:
        return self.current.world

    @property
    def config(self) -> Config:
        return self.current.world.config

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        store: Store | None = None,
        clock: Clock = steady,
        docker: Any = None,
        registry: CollectorRegistry | None = None,
        election: Election | None = None,
        make_source: SourceFactory = build_source,
        polling: bool = True,
        steps: Mapping[str, Step] | None = None,
    ) -> Daemon:
        """Build and start the daemon.

        For in-memory tests: ``polling=False`` leaves sources to ``poll``, ``make_source``
        makes fakes, ``steps`` replace the rollback steps the config would build.
        """
        world = Current(World.build(config))
        registry = registry or CollectorRegistry()
        metrics = Metrics(registry, __version__)
        url = config.state.url.secret()
        store = store or await open_store(url, clock=clock)
        election = election or election_for(url, getattr(store, "schema", None))
        session = aiohttp.ClientSession()
        scheduler = AsyncIOScheduler()
        scheduler.start()
        jobs = SourceJobs(scheduler, metrics, wall=clock)
        notifier = Notifier(config.notify, metrics)
        notifier.start()
        supervisor = Supervisor()
        health = Health(supervisor)
        report = Reporter(store, notifier, metrics, clock, health.store_failed)
        polled = Polled(jobs, world, supervisor)

        def leading() -> bool:
            return election.leading

        def client() -> Any:
            nonlocal docker
            if docker is None:
                import docker as docker_sdk

                docker = docker_sdk.from_env(timeout=60)
            return docker

        watched = Watched(store, on_new=polled.arm_commands)
        executions = Executions(
            store=store, report=report, supervisor=supervisor, health=health, world=world, watched=watched,
            plans=Plans(world, watched, client, session, clock, steps), metrics=metrics, clock=clock,
            leading=leading,
        )  # fmt: skip
        proposer = Proposer(
            store=store, report=report, supervisor=supervisor, health=health, world=world, executions=executions,
            clock=clock, leading=leading, output=polled.output,
        )  # fmt: skip
        deployments = Deployments(
            store=store, report=report, world=world, watched=watched, proposer=proposer, containers=Containers(client),
            metrics=metrics, clock=clock, leading=leading,
        )  # fmt: skip
        daemon = cls(
            world=world, clock=clock, store=store, registry=registry, metrics=metrics, election=election,
            session=session, scheduler=scheduler, jobs=jobs, polled=polled, notifier=notifier,
            supervisor=supervisor, health=health, report=report, watched=watched, proposer=proposer,
            evaluator=Evaluator(
                store=store, report=report, health=health, watched=watched, proposer=proposer, metrics=metrics,
                history=jobs.history, leading=leading,
            ),
            deployments=deployments,
            operators=Operators(
                store=store, report=report, world=world, proposer=proposer, executions=executions, deployments=deployments,
                clock=clock,
            ),
            leadership=Leadership(
                election=election, store=store, watched=watched, proposer=proposer, executions=executions,
                deployments=deployments, supervisor=supervisor, metrics=metrics,
            ),
            make_source=make_source, polling=polling,
        )  # fmt: skip
        await daemon._start()
        return daemon

    async def _start(self) -> None:
        self._schedule(self.world)
        await self.leadership.start()
        if self.election.shared:
            self.supervisor.service("election", every(POLL, self.leadership.campaign, "election"))
        self.supervisor.service("ticker", every(TICK, self._tick, "ticker"))
        if any(s.container for s in self.config.services.values()):
            self.supervisor.service("docker-events", self.deployments.watch_docker())
        self.health.started = True
        log.info("started", services=len(self.config.services), sources=len(self.config.sources))

    async def close(self, deadline: float = 30.0) -> None:
        """Stop polling, let a running rollback step finish (or leave it journaled), close everything."""
        await self.supervisor.stop(deadline, keep=("execute:",))
        await self.jobs.close()
        self.scheduler.shutdown(wait=False)
        await self.notifier.close(timeout=min(5.0, deadline))
        await self.session.close()
        try:
            await self.election.resign()
        except WatchdogError as exc:
            log.warning("resign_failed", error=str(exc))
        await self.store.aclose()
        log.info("stopped")

    # --- sources ---------------------------------------------------------------------------------

    def _schedule(self, world: World) -> None:
        config = world.config
        for name, source_config in config.sources.items():
            users = [run for runs in world.runs.values() for run in runs if run.config.source == name]
            if not users:
                continue
            interval = source_config.interval or min(world.interval(r.service) for r in users)
            keep = max((r.rule.baseline_before or 0.0) for r in users)
            source = self._make_source(name, source_config, self.session)
            if isinstance(source, ExecCommand):
                source.gate = lambda: self.election.leading  # a smoke test runs on the leader only
            self.jobs.add(source, interval, source_config.timeout, keep, scheduled=self._polling)
            for run in users:
                self.jobs.subscribe(
                    name, (run.service, run.rule.name), [run.measure], self.evaluator.callback(run)
                )

    async def poll(self, source: str) -> None:
        """Poll ``source`` now, outside its schedule."""
        await self.jobs.poll_now(source)

    def alertmanager(self, payload: WebhookPayload) -> int:
        """Hand an Alertmanager notification to every alertmanager source; how many took it.

        The value gauges follow at once; evaluations stay on the schedule, so a
        ``failures`` rule counts polls, not POSTs.
        """
        taken = 0
        now = self.clock()
        for name in self.config.sources:
            source = self.polled.source(name)
            if isinstance(source, AlertmanagerAlerts):
                source.receive(payload)
                taken += 1
                for runs in self.world.runs.values():
                    for run in runs:
                        if run.config.source == name and run.measure.kind == "alerts":
                            value = float(source.firing(run.measure.expr, now))
                            self.metrics.rule_value.labels(run.service, run.rule.name).set(value)
        return taken

    # --- reload ----------------------------------------------------------------------------------

    async def reload(self, config: Config) -> bool:
        """Apply a new (already checked) config; False, with the old one running, when it cannot be built.

        Rules whose meaning is unchanged keep their state; proposals of a
        service the new config no longer has are cancelled with the reason.
        """
        try:
            world = World.build(config)
        except WatchdogError as exc:
            self.refuse_reload([str(exc)])
            return False
        old = self.world
        await self.jobs.close()
        self.current.world = world
        for live in self.watched:
            service = live.deployment.service
            if service not in config.services:
                records = await self.store.for_deployment(live.deployment.id)
                await self.proposer.cancel(
                    [r for r in records if r.proposed], f"service '{service}' was removed from the config"
                )
                self.watched.drop(service)
                continue
            before = {r.name: r for r in old.config.services[service].rules}
            after = {r.name: r for r in config.services[service].rules}
            for name in list(live.states):
                if before.get(name) != after.get(name):
                    del live.states[name]
        if config.notify != old.config.notify:
            await self.notifier.close(timeout=2.0)
            self.notifier = Notifier(config.notify, self.metrics)
            self.notifier.start()
            self.report.notifier = self.notifier
        self._schedule(world)
        for service in self.watched.services():
            self.polled.arm_commands(service)
        self.reloads.labels("applied").inc()
        log.info("reloaded", services=len(config.services), sources=len(config.sources))
        return True

    def refuse_reload(self, problems: list[str]) -> None:
        self.reloads.labels("refused").inc()
        log.error("reload_refused", problems=problems)

    # --- the ticker --------------------------------------------------------------------------------

    async def _tick(self) -> None:
        self._watch_wall_clock()
        await self.deployments.tick()

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
