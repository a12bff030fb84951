"""The end of a deployment's window: promoted, or unverified when a rollback rule saw nothing.

The same tick releases the previous images held for deployments nothing can
roll back any more.
"""

from __future__ import annotations

from watchdogd.decisions import window_end
from watchdogd.errors import Conflict
from watchdogd.model import Deployment, DeploymentState, Reason, RollbackRecord
from watchdogd.rollback.targets import target_of
from watchdogd.watch.history import HISTORY_DEPLOYMENTS
from watchdogd.watch.parts import Part, Shared
from watchdogd.watch.report import SYSTEM

UNVERIFIED_REASON = "the window ended unverified"
HOLD_SWEEP = 15.0
"""How often (seconds) held previous images are checked for release: a window's end, a rollback's."""


class Windows(Part):
    """Each tick: window ends, the remaining-time gauge, held previous images released."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self.swept = float("-inf")
        """When previous images were last released (see :meth:`release_images`)."""

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

    async def release_images(self) -> list[str]:
        """Release the previous images held for deployments that nothing can roll back any more."""
        if not any(target_of(svc) is not None for svc in self.world().config.services.values()):
            return []
        return await self.containers.release(await self.store.deployments(limit=HISTORY_DEPLOYMENTS))


def _promoted(service: str, unverified: list[str]) -> str:
    if not unverified:
        return f"{service} promoted: the window ended with no rule firing"
    return f"{service} promoted, but never verified by: {', '.join(unverified)} (no data)"
