"""Deployments: registered by a pipeline (API) or noticed from Docker events; their windows' ends.

One registration at a time per daemon: a Docker event and a POST racing each
other would otherwise supersede one another. A new deployment of a service
supersedes the one being watched (state ``superseded``, its open proposals
``cancelled``); a deployment noticed from Docker is completed, not
superseded, by a POST for the same image, and the migrations it brings join
the open proposal's plan until that plan starts executing.

``Deployments`` holds one lock and the parts it shares: ``registration``
(the API's registrations and their checks), ``noticed`` (Docker and Swarm
events, and the containers running at start), ``succession`` (what follows a
new deployment: the one it supersedes, a known-bad image), ``history`` (what
ran for a service) and ``windows`` (promoted or unverified at a window's end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from watchdogd.clock import Clock
from watchdogd.model import ContainerSnapshot, Deployment, DeploymentState
from watchdogd.store import Store
from watchdogd.telemetry import Metrics
from watchdogd.watch.containers import Containers as Containers  # re-exported: the daemon builds it
from watchdogd.watch.history import History
from watchdogd.watch.live import Watched
from watchdogd.watch.noticed import Noticed
from watchdogd.watch.parts import Shared
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.registration import Registered as Registered
from watchdogd.watch.registration import Registrar
from watchdogd.watch.registration import Registration as Registration
from watchdogd.watch.report import Reporter
from watchdogd.watch.succession import Succession
from watchdogd.watch.windows import Windows
from watchdogd.watch.world import World


class Deployments:
    """The daemon's one entry to deployments; registrations and Docker notices share its lock."""

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
        self.lock = asyncio.Lock()
        self.history = History(store, containers)
        shared = Shared(
            store=store, report=report, world=world, watched=watched, proposer=proposer,
            containers=containers, metrics=metrics, clock=clock, leading=leading,
        )  # fmt: skip
        succession = Succession(shared)
        self.registrar = Registrar(shared, lock=self.lock, history=self.history, succession=succession)
        self.noticed = Noticed(shared, lock=self.lock, history=self.history, succession=succession)
        self.windows = Windows(shared)

    async def register(self, request: Registration, actor: str) -> tuple[Deployment, Registered]:
        return await self.registrar.register(request, actor)

    async def watch_docker(self) -> None:
        await self.noticed.watch_docker()

    async def started(self, service: str, rollback: bool = False, state: str = "") -> None:
        await self.noticed.started(service, rollback, state)

    async def remember_containers(self) -> None:
        await self.noticed.remember_containers()

    async def last_seen(self, service: str) -> ContainerSnapshot | None:
        return await self.history.last_seen(service)

    async def release_images(self) -> list[str]:
        return await self.windows.release_images()

    async def tick(self) -> None:
        await self.windows.tick()

    async def finish(self, deployment: Deployment, state: DeploymentState, actor: str) -> Deployment:
        return await self.windows.finish(deployment, state, actor)
