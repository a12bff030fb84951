"""What watchdogd saw run for a service: in memory, then the store's deployment history.

The images a registration's ``previous_image`` may name, and the container last
seen for a service: what a deploy noticed later replaced.
"""

from __future__ import annotations

from watchdogd.model import ContainerSnapshot, DeploymentState
from watchdogd.store import Store
from watchdogd.watch.containers import Containers

HISTORY_DEPLOYMENTS = 200
"""How many of the latest deployments are searched for a previous image that ran."""


class History:
    """Lookups in the containers seen for each service and the store's deployments."""

    def __init__(self, store: Store, containers: Containers) -> None:
        self.store = store
        self.containers = containers

    async def ran(self, service: str, running: ContainerSnapshot | None) -> list[ContainerSnapshot]:
        """Images watchdogd saw running for ``service``, the newest first: in memory, then the store's.

        The container running now comes last: a name it shares with an older image means the older one.
        """
        ran = list(self.containers.ran.get(service, ()))
        for deployment in await self.store.deployments(limit=HISTORY_DEPLOYMENTS, service=service):
            ran += [s for s in (deployment.facts.current, deployment.facts.previous) if s is not None]
        now = running.image_id if running is not None else None
        ran = [s for s in ran if s.image_id != now] + ([running] if running is not None else [])
        return [s for s in ran if s.image_id]

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
