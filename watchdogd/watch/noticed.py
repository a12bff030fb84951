"""Deployments noticed from Docker: a container started, or a Swarm service updated, with another image.

Not a deployment: a rollback's own container, one already registered through
the API, or the swap a deployment registered before it waited for (that one
gets the new container). A Swarm service rolled back is back on an image that
ran before; one watchdogd did not start is audited as ``swarm_rolled_back``.
At start, a container running another image than the store last saw was
deployed while watchdogd was not watching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import structlog

from watchdogd.model import ContainerSnapshot, Deployment, DeploymentFacts, DeploymentState
from watchdogd.rollback.targets import target_of
from watchdogd.watch.parts import Serialized

log = structlog.get_logger("watchdogd")

EVENT_FILTERS = {"type": ["container", "service"], "event": ["start", "update"]}
"""Container starts (a container or Compose deploy) and Swarm service updates; other pairs are skipped."""


class Noticed(Serialized):
    """Docker events and the containers running at start, under ``lock`` (shared with registrations)."""

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
            seen = await self.history.last_seen(service)
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
        await self.succession.superseded(superseded, deployment)
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
        await self.succession.mark_known_bad(deployment)

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
        await self.succession.mark_known_bad(await self.store.deployment(deployment.id) or deployment)
        return True

    async def remember_containers(self) -> None:
        """The containers running now: what a deploy noticed later replaced.

        The last container seen for a service before this start is the store's
        (see :meth:`History.last_seen`): one that runs another image now was deployed
        while watchdogd was not watching, and is a deployment like one noticed live.
        """
        for name, svc in self.world().config.services.items():
            if target_of(svc) is None or name in self.containers.known:
                continue
            snapshot = await self.containers.capture(svc)
            if snapshot is None:
                continue
            last = await self.history.last_seen(name)
            if last is None or not snapshot.image_id or last.image_id == snapshot.image_id:
                self.containers.remember(name, snapshot)
                continue
            self.containers.remember(name, last)
            async with self.lock:
                await self._noticed_running(name, snapshot)


def _logged(done: Any) -> None:
    """A Docker event's handling failed: said in the log, never lost in a future nobody reads."""
    if not done.cancelled() and done.exception() is not None:
        exc = done.exception()
        log.error("docker_event_failed", error=f"{type(exc).__name__}: {exc}")
