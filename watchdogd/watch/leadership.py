"""Leadership: only the leading replica evaluates, decides and executes.

On taking the lead a replica picks everything up from the store as the last
leader left it: open deployments, proposals waiting for their time, plans that
were executing (resumed from their journal). On losing it, it stops deciding
and executing at once (a running plan is journaled; the next leader resumes
it). Followers catch up with the store on every poll of the election.
"""

from __future__ import annotations

import structlog

from watchdogd.leader import Election
from watchdogd.model import PROPOSED_STATES, RollbackState
from watchdogd.store import Store
from watchdogd.telemetry import Metrics
from watchdogd.watch.deployments import Deployments
from watchdogd.watch.execution import Executions
from watchdogd.watch.live import Watched
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.tasks import Supervisor

log = structlog.get_logger("watchdogd")


class Leadership:
    def __init__(
        self,
        *,
        election: Election,
        store: Store,
        watched: Watched,
        proposer: Proposer,
        executions: Executions,
        deployments: Deployments,
        supervisor: Supervisor,
        metrics: Metrics,
    ) -> None:
        self.election = election
        self.store = store
        self.watched = watched
        self.proposer = proposer
        self.executions = executions
        self.deployments = deployments
        self.supervisor = supervisor
        self.metrics = metrics

    @property
    def leading(self) -> bool:
        return self.election.leading

    async def start(self) -> None:
        if await self.election.campaign():
            await self.lead()
        else:
            log.info("following", reason="another replica leads")
            await self.sync()
        self.metrics.leader.set(1 if self.election.leading else 0)

    async def lead(self) -> None:
        """This replica leads from now: it picks everything up from the store."""
        self.metrics.leader.set(1)
        log.info("leading")
        self.watched.clear()
        await self.watched.refresh_all()
        for record in await self.store.in_states(PROPOSED_STATES):
            self.proposer.arm(record)
        for record in await self.store.unfinished():
            log.warning("rollback_resuming", rollback=record.id)
            self.executions.start(record.id, (RollbackState.EXECUTING,))
        await self.executions.reconcile()
        await self.deployments.remember_containers()

    def step_down(self) -> None:
        """The lock is gone: another replica may lead now, so stop deciding and executing here."""
        self.metrics.leader.set(0)
        self.proposer.disarm_all()
        self.supervisor.cancel_prefix("execute:")  # journaled: the next leader resumes the running step
        log.warning("following", reason="the leader lock is gone; timers and running plans stopped")

    async def campaign(self) -> None:
        """Ask for the lock (a follower) or check it is still held (the leader)."""
        was = self.election.leading
        leading = await self.election.campaign()
        if leading and not was:
            await self.lead()
        elif was and not leading:
            self.step_down()
        await self.sync()

    async def sync(self) -> None:
        """Catch up with the shared store: what another replica registered, voted or claimed."""
        await self.watched.refresh_all()
        if not self.election.leading:
            await self.watched.reload_states()
            return
        for record in await self.store.in_states(PROPOSED_STATES):
            if not self.proposer.armed(record.id):
                self.proposer.arm(record)
        for record in await self.store.unfinished():
            if not self.executions.running(record.id):
                self.executions.start(record.id, (RollbackState.EXECUTING,))
