"""Registering a deployment from the API (``POST /v1/deployments``), and its checks.

A registration repeating an Idempotency-Key is answered with the deployment it
made; one for the image a deployment noticed from Docker runs completes that
one; ``previous_image`` must name an image this host ran for the service or one
its ``images`` allow; the down SQL of the migrations is assessed, and rehearsed
when asked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import structlog

from watchdogd.decisions import may_register, may_rehearse
from watchdogd.errors import Conflict, Invalid
from watchdogd.imageref import allowed, same_image_name
from watchdogd.model import (
    ContainerSnapshot,
    Deployment,
    DeploymentFacts,
    DeploymentState,
    Migration,
    RollbackState,
)
from watchdogd.rollback.migrations import MigrationRequest, resolve
from watchdogd.rollback.targets import target_of
from watchdogd.watch.execution import rollback_target
from watchdogd.watch.parts import Serialized

log = structlog.get_logger("watchdogd")


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


class Registrar(Serialized):
    """Registrations, one at a time under ``lock`` (shared with deployments noticed from Docker)."""

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
            # the new one completes this deployment (see ``Noticed._swapped``).
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
        await self.succession.superseded(superseded, deployment)
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
        return await self.succession.mark_known_bad(deployment), registered

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
        for snapshot in await self.history.ran(request.service, running):
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


def _names(snapshot: ContainerSnapshot, named: str) -> bool:
    """Does ``named`` name the image of ``snapshot``: its ID, one of its digests, or its name?"""
    if named in (snapshot.image_id, snapshot.image_id.removeprefix("sha256:")):
        return True
    return any(same_image_name(named, ref) for ref in (snapshot.image, *snapshot.digests))


def _may_rehearse(plan: tuple[str, ...], sql_policy: str | None) -> None:
    refusal = may_rehearse(plan, sql_policy)
    if refusal is not None:
        raise Conflict(refusal, "sql_step_off")
