"""The composition root: opens the store, the sources and ``watchdogd.watch``'s parts, and runs them.

``await Daemon.open(config, store=..., clock=..., docker=...)`` builds the
whole daemon (nothing in it is filled in later) and starts its supervised
tasks; ``close`` stops them within a deadline, letting a running rollback
step finish. A reload builds the new world (every rule compiled) before
swapping it in; a config that cannot be built keeps the old one running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, Counter

from watchdogd import __version__
from watchdogd.clock import Clock, DriftWatch
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
from watchdogd.watch.freezes import Freezes
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


@dataclass(eq=False)
class Daemon:
    """watchdogd in one process. Build it with ``await Daemon.open(config)``."""

    current: Current
    clock: Clock
    store: Store
    registry: CollectorRegistry
    metrics: Metrics
    election: Election
    session: aiohttp.ClientSession
    scheduler: AsyncIOScheduler
    jobs: SourceJobs
    notifier: Notifier
    supervisor: Supervisor
    health: Health
    report: Reporter
    watched: Watched
    proposer: Proposer
    evaluator: Evaluator
    deployments: Deployments
    operators: Operators
    leadership: Leadership
    freezes: Freezes
    make_source: SourceFactory
    polling: bool
    tick: float = TICK

    def __post_init__(self) -> None:
        self.drift = DriftWatch(self.clock)
        self.reloads = Counter(
            "watchdogd_config_reloads",
            "Config reloads (SIGHUP), by result: applied, or refused (the old config keeps running).",
            ["result"],
            registry=self.registry,
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
        make_source: SourceFactory = build_source,
        polling: bool = True,
        steps: Mapping[str, Step] | None = None,
        tick: float = TICK,
    ) -> Daemon:
        """Build and start the daemon.

        For in-memory tests: ``polling=False`` leaves sources to ``poll``, ``make_source``
        makes fakes, ``steps`` replace the rollback steps the config would build, a short
        ``tick`` notices window ends sooner after a fake clock is stepped.
        """
        world = Current(World.build(config))
        registry = registry or CollectorRegistry()
        metrics = Metrics(registry, __version__)
        url = config.state.url.secret()
        store = store or await open_store(url, clock=clock)
        election = election_for(url, getattr(store, "schema", None))
        session = aiohttp.ClientSession()
        scheduler = AsyncIOScheduler()
        scheduler.start()
        jobs = SourceJobs(scheduler, metrics, wall=clock)
        notifier = Notifier(config.notify, metrics)
        notifier.start()
        supervisor = Supervisor()
        health = Health(supervisor)
        report = Reporter(store, notifier, metrics, clock, health.store_failed)

        def leading() -> bool:
            return election.leading

        def client() -> Any:
            nonlocal docker
            if docker is None:
                import docker as docker_sdk

                docker = docker_sdk.from_env(timeout=60)
            return docker

        def arm(service: str) -> None:
            jobs.arm_commands(world().sources_of(service), supervisor.job)

        watched = Watched(store, world, clock, on_new=arm)
        plans = Plans(world, watched, client, session, clock, steps, store=store)
        freezes = Freezes(store, report, world, clock)
        executions = Executions(
            store=store, report=report, supervisor=supervisor, health=health, world=world,
            watched=watched, plans=plans, metrics=metrics, clock=clock, leading=leading, freezes=freezes,
        )  # fmt: skip
        proposer = Proposer(
            store=store, report=report, supervisor=supervisor, health=health, world=world,
            executions=executions, clock=clock, leading=leading,
            output=jobs.output,
        )  # fmt: skip
        deployments = Deployments(
            store=store, report=report, world=world, watched=watched, proposer=proposer,
            containers=Containers(client), metrics=metrics, clock=clock, leading=leading,
        )  # fmt: skip
        evaluator = Evaluator(
            store=store, report=report, health=health, watched=watched, proposer=proposer,
            metrics=metrics, history=jobs.history, leading=leading,
            clip=lambda run, sample, start: jobs.since(run.config.source, run.measure, sample, start),
        )  # fmt: skip
        operators = Operators(
            store=store, report=report, world=world, proposer=proposer, executions=executions,
            deployments=deployments, clock=clock,
        )  # fmt: skip
        leadership = Leadership(
            election=election, store=store, watched=watched, proposer=proposer, executions=executions,
            deployments=deployments, supervisor=supervisor, metrics=metrics,
        )  # fmt: skip
        daemon = cls(
            world, clock, store, registry, metrics, election, session, scheduler, jobs, notifier,
            supervisor, health, report, watched, proposer, evaluator, deployments, operators,
            leadership, freezes, make_source, polling, tick,
        )  # fmt: skip
        await daemon._start()
        return daemon

    async def _start(self) -> None:
        self._schedule(self.world)
        await self.leadership.start()
        if self.election.shared:
            self.supervisor.service("election", every(POLL, self.leadership.campaign, "election"))
        self.supervisor.service("ticker", every(self.tick, self._tick, "ticker"))
        if any(s.container or s.compose or s.swarm_service for s in self.config.services.values()):
            self.supervisor.service("docker-events", self.deployments.watch_docker())
        self.health.started = True
        log.info("started", services=len(self.config.services), sources=len(self.config.sources))

    async def close(self, deadline: float = 30.0) -> None:
        """Stop polling, let a running rollback step finish (or leave it journaled), close everything."""
        await self.supervisor.stop(deadline, keep=("execute:",))
        await self.jobs.close()
        await self.evaluator.states.flush()
        self.scheduler.shutdown(wait=False)
        await self.notifier.close(timeout=min(5.0, deadline))
        await self.session.close()
        try:
            await self.election.resign()
        except WatchdogError as exc:
            log.warning("resign_failed", error=str(exc))
        await self.store.aclose()
        log.info("stopped")

    def _schedule(self, world: World, kept: Mapping[str, Source] | None = None) -> None:
        """Poll every source a rule reads, at the shortest interval of the services reading it.

        A source in ``kept`` (its config unchanged by a reload) goes on as it was,
        its history (scrape series, pre-deploy baselines) with it.
        """
        for name, source_config in world.config.sources.items():
            users = world.reading(name)
            if not users:
                continue
            interval = source_config.interval or min(world.interval(r.service) for r in users)
            keep = max(r.rule.learns_from for r in users)
            source = (kept or {}).get(name) or self.make_source(name, source_config, self.session)
            if isinstance(source, ExecCommand):
                source.gate = lambda: self.election.leading  # a smoke test runs on the leader only
            self.jobs.add(source, interval, source_config.timeout, keep, scheduled=self.polling)
            self.jobs.unsubscribe_all(name)
            for run in users:
                callback = self.evaluator.callback(run)
                self.jobs.subscribe(name, (run.service, run.rule.name), [run.measure], callback)

    async def poll(self, source: str) -> None:
        """Poll ``source`` now, outside its schedule."""
        await self.jobs.poll_now(source)

    def alertmanager(self, payload: WebhookPayload) -> int:
        """Hand an Alertmanager notification to every alertmanager source; how many took it.

        The value gauges follow at once; evaluations stay on the schedule, so a
        ``failures`` rule counts polls, not POSTs.
        """
        taken = 0
        for name in self.config.sources:
            source = self.jobs.source(name)
            if isinstance(source, AlertmanagerAlerts):
                source.receive(payload)
                taken += 1
                for run in self.world.reading(name):
                    value = float(source.firing(run.measure.expr, self.clock()))
                    self.metrics.rule_value.labels(run.service, run.rule.name).set(value)
        return taken

    async def reload(self, config: Config) -> bool:
        """Apply a new (already checked) config; False, the old one running, when it cannot be built.

        Rules that mean the same keep their state, sources whose config is
        unchanged their history; proposals of a service the new config no
        longer has are cancelled with the reason.
        """
        try:
            world = World.build(config)
        except WatchdogError as exc:
            self.refuse_reload([str(exc)])
            return False
        old = self.world
        kept: dict[str, Source] = {}
        for name in list(self.jobs.jobs):
            source = self.jobs.source(name)
            if source is not None and old.config.sources.get(name) == config.sources.get(name):
                kept[name] = source
            else:
                await self.jobs.remove(name)
        self.current.world = world
        for live in self.watched:
            service = live.deployment.service
            if service not in config.services:
                records = [r for r in await self.store.for_deployment(live.deployment.id) if r.proposed]
                await self.proposer.cancel(records, f"service '{service}' was removed from the config")
                self.watched.drop(service)
        self.watched.keep_states(old, world)
        if config.notify != old.config.notify:
            await self.notifier.close(timeout=2.0)
            self.notifier = self.report.notifier = Notifier(config.notify, self.metrics)
            self.notifier.start()
        self._schedule(world, kept)
        for name in set(kept) - {n for n in config.sources if world.reading(n)}:
            await self.jobs.remove(name)  # no rule reads it any more
        for service in self.watched.services():
            self.jobs.arm_commands(world.sources_of(service), self.supervisor.job)
        self.reloads.labels("applied").inc()
        log.info("reloaded", services=len(config.services), sources=len(config.sources))
        return True

    def refuse_reload(self, problems: list[str]) -> None:
        self.reloads.labels("refused").inc()
        log.error("reload_refused", problems=problems)

    async def _tick(self) -> None:
        jumped = self.drift.jumped()
        self.metrics.clock_drift.set(self.drift.drift)
        if jumped is not None:
            log.warning(
                "wall_clock_jumped",
                by=round(jumped, 3),
                drift=round(self.drift.drift, 3),
                kept="windows, timers and stored times follow the steady clock",
            )
            self.jobs.reschedule()  # the scheduler plans in wall time: poll again from now
        await self.deployments.tick()
