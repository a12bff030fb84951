"""What follows a new deployment of a service: the one it supersedes, and a known-bad image.

The deployment it supersedes ends (state ``superseded``, its open proposals
``cancelled``); a deploy of an image the service was rolled back from recently
is marked, notified and per ``on_known_bad`` rolled back (see
:mod:`watchdogd.watch.knownbad`).
"""

from __future__ import annotations

import dataclasses

from watchdogd.model import Deployment, DeploymentState, Reason, RollbackState
from watchdogd.watch.history import HISTORY_DEPLOYMENTS
from watchdogd.watch.knownbad import known_bad
from watchdogd.watch.parts import Part, Shared
from watchdogd.watch.report import SYSTEM


class Succession(Part):
    """A new deployment's consequences for the one it supersedes and for its image."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)

    async def superseded(self, superseded: list[Deployment], by: Deployment) -> None:
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

    async def mark_known_bad(self, deployment: Deployment) -> Deployment:
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
