"""Deployments: registered by a pipeline (API) or noticed from Docker events; their windows' ends.

One registration at a time per daemon: a Docker event and a POST racing each
other would otherwise supersede one another. A new deployment of a service
supersedes the one being watched (state ``superseded``, its open proposals
``cancelled``); a deployment noticed from Docker is completed, not
superseded, by a POST for the same image, and the migrations it brings join
the open proposal's plan until that plan starts executing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from watchdogd.clock import Clock
from watchdogd.decisions import may_register, may_rehearse, window_end
from watchdogd.errors import Conflict, Invalid
from watchdogd.imageref import allowed, same_image_name
from watchdogd.model import (
    ContainerSnapshot,
    Deployment,
    DeploymentFacts,
    DeploymentState,
    Migration,
    Reason,
    RollbackRecord,
    RollbackState,
)
from watchdogd.rollback.migrations import MigrationRequest, resolve
from watchdogd.rollback.targets import target_of
from watchdogd.store import Store
from watchdogd.telemetry import Metrics
from watchdogd.watch.containers import Containers as Containers  # re-exported: the daemon builds it
from watchdogd.watch.execution import rollback_target
from watchdogd.watch.knownbad import known_bad
from watchdogd.watch.live import Watched
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.report import SYSTEM, Reporter
from watchdogd.watch.world import World

log = structlog.get_logger("watchdogd")

UNVERIFIED_REASON = "the window ended unverified"
EVENT_FILTERS = {"type": ["container", "service"], "event": ["start", "update"]}
"""Container starts (a container or Compose deploy) and Swarm service updates; other pairs are skipped."""
HISTORY_DEPLOYMENTS = 200
"""How many of the latest deployments are searched for a previous image that ran."""
HOLD_SWEEP = 15.0
"""How often (seconds) held previous images are checked for release: a window's end, a rollback's."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What a pipeline registers (``POST /v1/deployments``)."""

    service: str
    image: str | None = None
    previous_image: str | None = None
    migrations: tuple[Migration, ...] = ()
    """Migrations ready to run; ``register`` adds those made from ``wanted``."""
    window: float | None = None
    rehearse: bool = False
    idempotency_key: str | None = None
    wanted: tuple[MigrationRequest, ...] = ()
    """Migrations as a request names them: by id (read from the migrations directory) or with SQL."""


@dataclass(frozen=True, slots=True)
class Registered:
    """The answer to a registration, beyond the deployment itself."""

    sql_policy: str | None = None
    destroys: tuple[str, ...] = ()
    assessment_error: str | None = None
    rehearsal: dict[str, str] | None = None
    notes: tuple[str, ...] = field(default=())
    """What the pipeline should know: a plan that could not take the migrations, a repeated key."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sql_policy is not None:
            out["sql_policy"] = self.sql_policy
            out["destroys"] = list(self.destroys)
        if self.assessment_error is not None:
            out["assessment_error"] = self.assessment_error
        if self.rehearsal is not None:
            out["rehearsal"] = self.rehearsal
        if self.notes:
            out["notes"] = list(self.notes)
        return out


class Deployments:
    def __init__(
        self,
        *,
        store: Store,
        report: Reporter,
        world: Callable[[], World],
        watched: Watched,
        proposer: Proposer,
        containers: Containers,
        metrics: Metrics,
        clock: Clock,
        leading: Callable[[], bool],
    ) -> None:
        self.store = store
        self.report = report
        self.world = world
        self.watched = watched
        self.proposer = proposer
        self.containers = containers
        self.metrics = metrics
        self.clock = clock
        self.leading = leading
        self.lock = asyncio.Lock()
        self.swept = float("-inf")
        """When previous images were last released (see :meth:`release_images`)."""

    # --- registration ---------------------------------------------------------------------------

    async def register(self, request: Registration, actor: str) -> tuple[Deployment, Registered]:
        """A deployment from the API; it completes one noticed from Docker for the same image."""
        svc = self.world().service(request.service)
        if request.rehearse:
            _may_rehearse(svc.plan(), None)
        if request.wanted:  # read and parsed off the event loop, before the lock
            made = await resolve(request.service, svc.database, request.wanted)
            request = dataclasses.replace(request, migrations=request.migrations + made, wanted=())
        async with self.lock:
            return await self._register(request, actor)

    async def _register(self, request: Registration, actor: str) -> tuple[Deployment, Registered]:
        svc = self.world().service(request.service)
        if request.idempotency_key is not None:
            seen = await self.store.deployment_for_key(request.idempotency_key)
            if seen is not None:
                if seen.service != request.service:
                    raise Conflict(
                        f"Idempotency-Key already used for deployment {seen.id} of '{seen.service}'",
                        "idempotency_key_reused",
                    )
                return seen, Registered(notes=("a deployment with this Idempotency-Key exists: answered it",))
        live = await self.watched.refresh(request.service)
        refusal = may_register(live.deployment.state if live else None)
        if refusal is not None:
            raise Conflict(refusal, "rolling_back")
        running = await self.containers.capture(svc)
        asked = await self._asked_previous(request, running)
        if live is not None and self._completes(live.deployment, request, running):
            return await self._complete(live.deployment, request, actor)
        previous: ContainerSnapshot | None
        if running is not None and request.image and not _names(running, request.image):
            # Registered before the swap: what runs now is the previous container; the Docker event of
            # the new one completes this deployment (see ``_noticed``).
            self.containers.remember(request.service, running)
            previous, running = running, None
        else:
            previous = self.containers.previous_of(request.service, running) or asked
        facts = DeploymentFacts("api", previous, running, request.migrations)
        facts, registered = await self._assess(request.service, facts, request.rehearse)
        deployment, superseded = await self.store.add_deployment(
            request.service,
            request.image or (running.image if running else None),
            request.previous_image or (previous.image if previous else None),
            self.clock(),
            request.window or self.world().window(request.service),
            facts,
            request.idempotency_key,
        )
        await self.containers.hold(deployment)
        await self._superseded(superseded, deployment)
        self.metrics.unverified.labels(deployment.service).set(0)
        await self.report(
            "deployment",
            service=deployment.service,
            deployment_id=deployment.id,
            actor=actor,
            detail={
                "image": deployment.image,
                "previous_image": deployment.previous_image,
                "migrations": [m.id for m in request.migrations],
                "state": "watching",
                **registered.to_json(),
            },
        )
        await self.watched.refresh(request.service)
        return await self._known_bad(deployment), registered

    async def _asked_previous(
        self, request: Registration, running: ContainerSnapshot | None
    ) -> ContainerSnapshot | None:
        """The previous container a request names, or 422 when a rollback must not start it.

        For a service with a container, ``previous_image`` must name an image this
        host ran for that service (its ID, a digest, or the name it ran under):
        the answer is then what ran, pinned to its image ID, even if the tag has
        moved since. Else it must match the service's ``images`` allow-list.
        """
        named = request.previous_image
        svc = self.world().service(request.service)
        if named is None:
            return None
        if target_of(svc) is None:  # no container step: only a label
            return ContainerSnapshot(request.service, named, "", {})
        for snapshot in await self._ran(request.service, running):
            if _names(snapshot, named):
                return snapshot
        if allowed(named, svc.images) is not None:
            return ContainerSnapshot(svc.container or request.service, named, "", {})
        patterns = ", ".join(svc.images) if svc.images else "none"
        raise Invalid(
            f"previous_image '{named}' never ran for service '{request.service}' on this host as far as "
            f"watchdogd saw, and services.{request.service}.images does not allow it (patterns: {patterns}): "
            "a rollback will not start it. Leave previous_image out when watchdogd saw the old container, "
            "or add its repository to the service's images.",
            "previous_image_not_allowed",
        )

    async def _ran(self, service: str, running: ContainerSnapshot | None) -> list[ContainerSnapshot]:
        """Images watchdogd saw running for ``service``, the newest first: in memory, then the store's.

        The container running now comes last: a name it shares with an older image means the older one.
        """
        ran = list(self.containers.ran.get(service, ()))
        for deployment in await self.store.deployments(limit=HISTORY_DEPLOYMENTS, service=service):
            ran += [s for s in (deployment.facts.current, deployment.facts.previous) if s is not None]
        now = running.image_id if running is not None else None
        ran = [s for s in ran if s.image_id != now] + ([running] if running is not None else [])
        return [s for s in ran if s.image_id]

    @staticmethod
    def _completes(deployment: Deployment, request: Registration, running: ContainerSnapshot | None) -> bool:
        """A POST for the image a deployment noticed from Docker runs: it completes that one."""
        if deployment.state is not DeploymentState.WATCHING or deployment.facts.origin != "docker":
            return False
        if request.image is None or deployment.image == request.image:
            return True
        noticed = deployment.facts.current  # the same image under another tag
        return running is not None and noticed is not None and running.image_id == noticed.image_id != ""

    async def _complete(
        self, deployment: Deployment, request: Registration, actor: str
    ) -> tuple[Deployment, Registered]:
        facts = dataclasses.replace(deployment.facts, migrations=request.migrations, origin="docker+api")
        facts, registered = await self._assess(deployment.service, facts, request.rehearse)
        await self.store.update_facts(deployment.id, facts)
        completed = await self.store.deployment(deployment.id) or deployment
        notes: list[str] = []
        if request.migrations:
            latest = await self.store.latest_for(deployment.id)
            if latest is not None and latest.proposed:
                await self.proposer.replan(completed)
                notes.append(f"the migrations joined the plan of rollback {latest.id} ({latest.state})")
            elif latest is not None and latest.state is RollbackState.EXECUTING:
                notes.append(
                    f"rollback {latest.id} is already executing: these migrations are not in its plan"
                )
        await self.report(
            "deployment_completed",
            service=deployment.service,
            deployment_id=deployment.id,
            actor=actor,
            detail={"migrations": [m.id for m in request.migrations], "notes": notes},
        )
        await self.watched.refresh(deployment.service)
        return completed, dataclasses.replace(registered, notes=tuple(notes))

    async def _assess(
        self, service: str, facts: DeploymentFacts, rehearse: bool
    ) -> tuple[DeploymentFacts, Registered]:
        """The down SQL's assessment (what it would destroy) and, when asked, its rehearsal."""
        svc = self.world().service(service)
        if not facts.migrations or svc.database is None:
            return facts, Registered()
        draft = Deployment("", service, None, None, DeploymentState.WATCHING, 0.0, 0.0, None, facts)
        target = rollback_target(draft, (), svc)
        from watchdogd.rollback.sql import SqlStep  # asyncpg only for a service with a database

        step = SqlStep()
        try:
            assessment = await step.assess(target)
        except Exception as exc:  # the database's answer, whatever it is, must not lose the deployment
            log.warning("assessment_failed", service=service, error=str(exc))
            policy = "approve"
            registered = Registered(
                sql_policy=policy,
                assessment_error=(
                    f"could not assess the down SQL ({type(exc).__name__}): an operator approves"
                ),
            )
        else:
            policy = assessment.action
            registered = Registered(
                sql_policy=policy,
                destroys=tuple(str(f) for f in assessment.findings),
                assessment_error=assessment.error,
            )
        if rehearse:
            _may_rehearse(svc.plan(), policy)
            result = await step.rehearse(target)
            registered = dataclasses.replace(
                registered, rehearsal={"status": result.status, "detail": result.detail}
            )
        return dataclasses.replace(facts, sql_policy=policy), registered

    async def _superseded(self, superseded: list[Deployment], by: Deployment) -> None:
        for old in superseded:
            why = f"superseded by deployment {by.id}"
            await self.report(
                "superseded",
                service=old.service,
                deployment_id=old.id,
                detail={"by": by.id, "state": "superseded"},
            )
            cancelled = [
                r for r in await self.store.for_deployment(old.id) if r.state is RollbackState.CANCELLED
            ]
            await self.proposer.cancel(cancelled, why)

    # --- noticed from Docker ------------------------------------------------------------------------

    async def watch_docker(self) -> None:
        """Deployments noticed from Docker: a service's container started with another image."""
        loop = asyncio.get_running_loop()
        targets = [
            (name, target)
            for name, svc in self.world().config.services.items()
            if (target := target_of(svc)) is not None
        ]
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                try:
                    client = self.containers.docker()
                    for event in client.events(decode=True, filters=EVENT_FILTERS):
                        if stop.is_set():
                            return
                        kind = event.get("Type")
                        if (kind, event.get("Action")) not in (("container", "start"), ("service", "update")):
                            continue
                        attributes = (event.get("Actor") or {}).get("Attributes") or {}
                        # A Swarm service update that is a rollback (Swarm's own or asked for) is no deploy.
                        state = str(attributes.get("updatestate.new", ""))
                        rollback = state.startswith("rollback")
                        for service, target in targets:
                            mine = getattr(target, "event_type", "container") == kind
                            if mine and target.matches(attributes):
                                done = asyncio.run_coroutine_threadsafe(
                                    self.started(service, rollback, state), loop
                                )
                                done.add_done_callback(_logged)
                except Exception as exc:
                    log.warning("docker_events_lost", error=str(exc))
                    stop.wait(2.0)

        thread = threading.Thread(target=follow, name="docker-events", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            stop.set()

    async def started(self, service: str, rollback: bool = False, state: str = "") -> None:
        """``rollback``: the event was a Swarm service rolled back, by Swarm or on request; ``state``: its
        ``UpdateStatus`` state as the event gave it."""
        async with self.lock:
            await self._noticed(service, rollback, state)

    async def _noticed(self, service: str, rollback: bool = False, state: str = "") -> None:
        svc = self.world().config.services.get(service)
        if svc is None or target_of(svc) is None:
            return
        snapshot = await self.containers.capture(svc)
        if snapshot is not None and rollback:
            # Back on an image that ran before: what runs now, not a deployment (never rolled back "to" the
            # bad one). A watched deployment's own rollback step finds it done and waits for the tasks.
            self.containers.remember(service, snapshot)
            log.info("swarm_service_rolled_back", service=service, image=snapshot.image_id)
            if state == "rollback_started":
                await self._rolled_back_not_by_us(service, snapshot)
            return
        if snapshot is not None:
            await self._noticed_running(service, snapshot)

    async def _rolled_back_not_by_us(self, service: str, snapshot: ContainerSnapshot) -> None:
        """Audit and notify a Swarm rollback watchdogd did not start: Swarm's own, or an operator's."""
        live = self.watched.get(service)
        if live is not None and live.deployment.state is DeploymentState.ROLLING_BACK:
            return  # watchdogd's own rollback
        from watchdogd.rollback.swarmspec import previous_of_service, swarm_facts

        message = str(swarm_facts(snapshot).get("update_message") or "")
        by = "operator" if "manually requested" in message else "swarm"
        replaced = previous_of_service(snapshot)
        deployment = live.deployment if live is not None else None
        if deployment is None:
            deployment = next(iter(await self.store.deployments(limit=1, service=service)), None)
        # Swarm's own rollback leaves no previous spec: the image rolled away from is then the deployment's
        from_image = replaced.image if replaced is not None else deployment.image if deployment else None
        who = "Swarm rolled" if by == "swarm" else "an operator rolled (docker service rollback)"
        await self.report(
            "swarm_rolled_back",
            service=service,
            deployment_id=deployment.id if deployment is not None else None,
            detail={"by": by, "image": snapshot.image, "from_image": from_image, "message": message},
            summary=f"{who} {service} back from {from_image or 'its spec'} to {snapshot.image}: {message}",
        )

    async def _noticed_running(self, service: str, snapshot: ContainerSnapshot) -> None:
        """``snapshot`` runs for ``service`` now: a deployment when it replaced the last container seen."""
        seen = self.containers.known.get(service)
        if seen is None:  # not captured at start (the engine was away): the store's last one
            seen = await self.last_seen(service)
            if seen is not None:
                self.containers.remember(service, seen)
        changed = seen is not None and seen.image_id != snapshot.image_id
        previous = self.containers.previous_of(service, snapshot)
        live = self.watched.get(service)
        if not changed or (live is not None and live.deployment.state is DeploymentState.ROLLING_BACK):
            return  # the rollback's own container
        current = live.deployment.facts.current if live is not None else None
        if current is not None and current.image_id == snapshot.image_id:
            return  # already registered through the API
        if live is not None and await self._swapped(live.deployment, snapshot):
            return
        if previous is None or not self.leading():
            return
        latest = await self.store.deployments(limit=1)
        if (
            latest
            and latest[0].service == service
            and latest[0].state
            in (
                DeploymentState.ROLLED_BACK,
                DeploymentState.ROLLBACK_FAILED,
            )
        ):
            prior = latest[0].facts.previous
            if prior is not None and prior.image_id == snapshot.image_id:
                return
        facts = DeploymentFacts("docker", previous, snapshot, ())
        deployment, superseded = await self.store.add_deployment(
            service, snapshot.image, previous.image, self.clock(), self.world().window(service), facts
        )
        await self.containers.hold(deployment)
        await self._superseded(superseded, deployment)
        await self.report(
            "deployment",
            service=service,
            deployment_id=deployment.id,
            detail={
                "image": snapshot.image,
                "previous_image": previous.image,
                "origin": "docker",
                "state": "watching",
            },
        )
        await self.watched.refresh(service)
        await self._known_bad(deployment)

    async def _swapped(self, deployment: Deployment, snapshot: ContainerSnapshot) -> bool:
        """A deployment registered before its container swap gets the new container as its current one."""
        facts = deployment.facts
        if deployment.state is not DeploymentState.WATCHING or facts.current is not None:
            return False
        if facts.previous is None or facts.previous.image_id == snapshot.image_id:
            return False
        await self.store.update_facts(deployment.id, dataclasses.replace(facts, current=snapshot))
        await self.report(
            "deployment_completed",
            service=deployment.service,
            deployment_id=deployment.id,
            detail={"image": snapshot.image, "image_id": snapshot.image_id, "origin": "docker"},
        )
        await self.watched.refresh(deployment.service)
        await self._known_bad(await self.store.deployment(deployment.id) or deployment)
        return True

    async def _known_bad(self, deployment: Deployment) -> Deployment:
        """Mark, notify and per ``on_known_bad`` roll back a deploy of an image rolled back recently."""
        svc = self.world().config.services.get(deployment.service)
        defaults = self.world().config.defaults
        span = defaults.known_bad_for if svc is None or svc.known_bad_for is None else svc.known_bad_for
        if span <= 0 or deployment.facts.current is None or deployment.facts.known_bad:
            return deployment
        history = await self.store.deployments(limit=HISTORY_DEPLOYMENTS, service=deployment.service)
        mark = known_bad(deployment, history, self.clock() - span)
        if mark is None:
            return deployment
        await self.store.update_facts(deployment.id, dataclasses.replace(deployment.facts, known_bad=mark))
        marked = await self.store.deployment(deployment.id) or deployment
        then = (svc.on_known_bad if svc is not None else None) or defaults.on_known_bad
        await self.report(
            "known_bad_image",
            service=deployment.service,
            deployment_id=deployment.id,
            detail={**mark, "on_known_bad": then},
            summary=f"{deployment.service}: {mark['reason']}",
        )
        await self.watched.refresh(deployment.service)
        if then == "rollback" and self.leading() and marked.state is DeploymentState.WATCHING:
            reason = Reason(at=self.clock(), text=str(mark["reason"]), operator=SYSTEM)
            await self.proposer.propose(marked, reason)
        return marked

    async def remember_containers(self) -> None:
        """The containers running now: what a deploy noticed later replaced.

        The last container seen for a service before this start is the store's
        (see :meth:`last_seen`): one that runs another image now was deployed
        while watchdogd was not watching, and is a deployment like one noticed live.
        """
        for name, svc in self.world().config.services.items():
            if target_of(svc) is None or name in self.containers.known:
                continue
            snapshot = await self.containers.capture(svc)
            if snapshot is None:
                continue
            last = await self.last_seen(name)
            if last is None or not snapshot.image_id or last.image_id == snapshot.image_id:
                self.containers.remember(name, snapshot)
                continue
            self.containers.remember(name, last)
            async with self.lock:
                await self._noticed_running(name, snapshot)

    async def release_images(self) -> list[str]:
        """Release the previous images held for deployments that nothing can roll back any more."""
        if not any(target_of(svc) is not None for svc in self.world().config.services.values()):
            return []
        return await self.containers.release(await self.store.deployments(limit=HISTORY_DEPLOYMENTS))

    async def last_seen(self, service: str) -> ContainerSnapshot | None:
        """The container the store's deployment history last saw run for ``service``.

        After a rollback that is the container rolled back to; else the deployed
        one (or, registered before its swap, the one it replaces).
        """
        for deployment in await self.store.deployments(limit=HISTORY_DEPLOYMENTS, service=service):
            facts = deployment.facts
            if deployment.state is DeploymentState.ROLLED_BACK:
                seen = facts.previous
            else:
                seen = facts.current or facts.previous
            if seen is not None and seen.image_id:
                return seen
        return None

    # --- windows ---------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Window ends, the remaining-time gauge, and previous images nothing can roll back to released."""
        now = self.clock()
        world = self.world()
        if self.leading() and now - self.swept >= HOLD_SWEEP:
            self.swept = now
            await self.release_images()
        for live in self.watched:
            deployment = live.deployment
            remaining = max(0.0, deployment.window_ends_at - now)
            self.metrics.window_remaining.labels(deployment.service).set(remaining)
            self.metrics.deployment_started.labels(deployment.service).set(deployment.started_at)
            if deployment.state is not DeploymentState.WATCHING or remaining > 0 or not self.leading():
                continue
            latest = await self.proposer.latest_for(deployment)  # a group's proposal holds each member
            blind = self.watched.blind_rollback_rules(deployment, world)
            verdict = window_end(
                deployment.state, deployment.window_ends_at, now, latest.state if latest else None, blind
            )
            if verdict == "promote":
                await self.finish(deployment, DeploymentState.PROMOTED, SYSTEM)
            elif verdict == "unverified":
                await self._unverified(deployment, blind, latest)

    async def _unverified(
        self, deployment: Deployment, blind: list[str], latest: RollbackRecord | None
    ) -> None:
        """The window ended with rollback rules that saw nothing: the service's ``on_unverified`` decides."""
        then = self.world().on_unverified(deployment.service)
        if then == "promote":
            await self.finish(deployment, DeploymentState.PROMOTED, SYSTEM)
            return
        asked = latest is not None and any(r.text.startswith(UNVERIFIED_REASON) for r in latest.reasons)
        if then == "rollback" and not asked:  # proposed once: a veto of it leaves the deploy unverified
            text = f"{UNVERIFIED_REASON}: no data from {', '.join(blind)}"
            await self.proposer.propose(deployment, Reason(at=self.clock(), text=text, operator=SYSTEM))
            return
        await self.finish(deployment, DeploymentState.UNVERIFIED, SYSTEM)

    async def finish(self, deployment: Deployment, state: DeploymentState, actor: str) -> Deployment:
        """End a watched deployment's window: promoted, or unverified (a rollback rule saw nothing).

        An unverified one may still be promoted by an operator.
        """
        allowed = (DeploymentState.WATCHING, DeploymentState.UNVERIFIED)
        self.metrics.unverified.labels(deployment.service).set(
            1 if state is DeploymentState.UNVERIFIED else 0
        )
        if not await self.store.set_deployment_state(deployment.id, state, allowed):
            current = await self.store.deployment(deployment.id) or deployment
            raise Conflict(f"deployment {deployment.id} is {current.state}")
        world = self.world()
        seen = await self.watched.seen(deployment, world)
        unverified = seen.unverified
        blind = self.watched.blind_rollback_rules(deployment, world, seen)
        await self.watched.refresh(deployment.service)
        detail = {"unverified_rules": unverified, "state": str(state)}
        if state is DeploymentState.UNVERIFIED:
            summary = (
                f"{deployment.service}: the window ended unverified: no data from rollback rules "
                + ", ".join(blind)
            )
            await self.report(
                "unverified",
                service=deployment.service,
                deployment_id=deployment.id,
                actor=actor,
                detail={**detail, "blind_rules": blind},
                summary=summary,
            )
        else:
            await self.report(
                "promoted",
                service=deployment.service,
                deployment_id=deployment.id,
                actor=actor,
                detail=detail,
                summary=_promoted(deployment.service, unverified),
            )
        return await self.store.deployment(deployment.id) or deployment


def _logged(done: Any) -> None:
    """A Docker event's handling failed: said in the log, never lost in a future nobody reads."""
    if not done.cancelled() and done.exception() is not None:
        exc = done.exception()
        log.error("docker_event_failed", error=f"{type(exc).__name__}: {exc}")


def _names(snapshot: ContainerSnapshot, named: str) -> bool:
    """Does ``named`` name the image of ``snapshot``: its ID, one of its digests, or its name?"""
    if named in (snapshot.image_id, snapshot.image_id.removeprefix("sha256:")):
        return True
    return any(same_image_name(named, ref) for ref in (snapshot.image, *snapshot.digests))


def _may_rehearse(plan: tuple[str, ...], sql_policy: str | None) -> None:
    refusal = may_rehearse(plan, sql_policy)
    if refusal is not None:
        raise Conflict(refusal, "sql_step_off")


def _promoted(service: str, unverified: list[str]) -> str:
    if not unverified:
        return f"{service} promoted: the window ended with no rule firing"
    return f"{service} promoted, but never verified by: {', '.join(unverified)} (no data)"
