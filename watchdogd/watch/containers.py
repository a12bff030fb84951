"""The containers watchdogd saw run for each service, and the previous images it holds on the host.

What a deploy replaced is what a rollback goes back to: the last container
seen for each service (in memory, else the store's deployment history; see
``Deployments.last_seen``), the images that ran for it, and a holder per
deployment so ``docker image prune`` cannot delete the previous image while a
rollback to it may still be needed (see :mod:`watchdogd.rollback.holds`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from watchdogd.config.models import ServiceConfig
from watchdogd.model import ContainerSnapshot, Deployment
from watchdogd.rollback.targets import target_of

log = structlog.get_logger("watchdogd")

RAN_KEPT = 20
"""Images remembered per service as having run there (besides those in the store's deployments)."""


class Containers:
    """The containers seen for each service: what a deploy replaced, to roll back to."""

    def __init__(self, docker: Callable[[], Any]) -> None:
        self.docker = docker
        self.known: dict[str, ContainerSnapshot] = {}
        """The last container seen for each service."""
        self.before: dict[str, ContainerSnapshot] = {}
        """For each service, the last container seen with another image than the current one."""
        self.ran: dict[str, list[ContainerSnapshot]] = {}
        """For each service, the images seen running: one snapshot per image ID, the newest first."""

    def remember(self, service: str, snapshot: ContainerSnapshot) -> None:
        """``snapshot`` is the service's container now: what it runs ran on this host for the service."""
        self.known[service] = snapshot
        if snapshot.image_id:
            others = [s for s in self.ran.get(service, ()) if s.image_id != snapshot.image_id]
            self.ran[service] = [snapshot, *others][:RAN_KEPT]

    async def capture(self, svc: ServiceConfig) -> ContainerSnapshot | None:
        """The service's target as it runs now: its container, or every replica of its Compose service."""
        target = target_of(svc)
        if target is None:
            return None  # nothing to capture: the Docker SDK is not even imported
        from watchdogd.rollback.container import capture_target

        try:
            return await capture_target(self.docker(), target)
        except Exception as exc:  # no engine, no container: the deployment is still watched
            log.warning("capture_failed", target=target.label, error=str(exc))
            return None

    def previous_of(self, service: str, current: ContainerSnapshot | None) -> ContainerSnapshot | None:
        """The container that ran before ``current``: the last one seen with another image."""
        if current is None:
            return None
        known = self.known.get(service)
        if known is not None and known.image_id != current.image_id:
            self.before[service] = known
        self.remember(service, current)
        before = self.before.get(service)
        return before if before is not None and before.image_id != current.image_id else None

    async def hold(self, deployment: Deployment) -> None:
        """Keep the deployment's previous image on the host until nothing can roll back to it."""
        previous = deployment.facts.previous
        if previous is None or not previous.image_id:
            return
        from watchdogd.rollback import holds  # the Docker SDK only where containers are watched

        try:
            made = await holds.hold(_api(self.docker()), deployment.service, deployment.id, previous)
        except Exception as exc:  # no engine: the rollback may still pull it back by its digest
            log.warning("image_not_held", service=deployment.service, error=str(exc))
            return
        if made:
            log.info("image_held", service=deployment.service, deployment=deployment.id, holders=made)

    async def release(self, deployments: Sequence[Deployment]) -> list[str]:
        """Remove the holders of deployments nothing can roll back any more; ``deployments`` newest first."""
        from watchdogd.rollback import holds

        try:
            api = _api(self.docker())
            rows = await holds.holders(api)
        except Exception as exc:
            log.warning("holders_unreadable", error=str(exc))
            return []
        by_id = {d.id: d for d in deployments}
        done: list[dict[str, Any]] = []
        for row in rows:
            deployment = by_id.get(str((row.get("Labels") or {}).get(holds.DEPLOYMENT_LABEL)))
            newer = deployment is not None and any(
                d.service == deployment.service and d.started_at > deployment.started_at for d in deployments
            )
            if holds.releasable(deployment, newer):
                done.append(row)
        try:
            gone = await holds.release(api, done)
        except Exception as exc:
            log.warning("holders_not_released", error=str(exc))
            return []
        if gone:
            log.info("images_released", holders=gone)
        return gone


def _api(client: Any) -> Any:
    """The low-level API client of a ``docker.DockerClient`` (or the API client itself)."""
    return getattr(client, "api", client)
