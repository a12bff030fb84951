"""Service groups: members rolled back together, as one proposal with one decision.

A rollback proposed for one member is the group's: it lives on that member's
deployment (the anchor), every other member's open deployment is in its
target, and its plan is each member's own steps, member after member, in the
group's ``order`` (``SERVICE/STEP``). A member with no open deployment has
nothing this release changed: it is skipped, and the record says why (rolling
a service back to a state older than its running, promoted release would undo
work nobody asked to undo). Which members are back is read from the steps
(``watchdogd.decisions.group_outcome``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from watchdogd.decisions import Policy, group_of_record, group_policy, group_steps, plan_steps
from watchdogd.model import Deployment, DeploymentState, Reason, RollbackRecord, RollbackState
from watchdogd.store import Store
from watchdogd.watch.execution import target_of
from watchdogd.watch.world import World


@dataclass(frozen=True, slots=True)
class Member:
    service: str
    deployment: Deployment | None
    skipped: str | None = None
    """Why it is not rolled back (None: it is)."""


class Groups:
    def __init__(self, store: Store, world: Callable[[], World]) -> None:
        self.store = store
        self.world = world

    def of(self, service: str) -> str | None:
        return self.world().config.group_of(service)

    def order(self, group: str) -> tuple[str, ...]:
        return self.world().config.groups[group].sequence

    async def open_proposal(self, group: str) -> RollbackRecord | None:
        """The group's open proposal (pending or awaiting approval), on any member's deployment."""
        return await self._find(group, lambda r: r.proposed)

    async def covering(self, deployment: Deployment) -> RollbackRecord | None:
        """The newest rollback that covers ``deployment``: its own, or its group's that names it."""
        own = await self.store.latest_for(deployment.id)
        group = self.of(deployment.service)
        if group is None:
            return own
        found = await self._find(
            group,
            lambda r: (
                (r.proposed or r.state is RollbackState.EXECUTING) and deployment.id in _deployment_ids(r)
            ),
        )
        return found or own

    async def _find(self, group: str, wanted: Callable[[RollbackRecord], bool]) -> RollbackRecord | None:
        members = set(self.world().config.groups[group].services)
        found: list[RollbackRecord] = []
        for service in members:
            for deployment in await self.store.deployments(open_only=True, service=service):
                record = await self.store.latest_for(deployment.id)
                if record is None or not wanted(record):
                    continue
                if (group_of_record(record) or {}).get("name") == group:
                    found.append(record)
        return min(found, key=lambda r: r.proposed_at) if found else None

    async def members(self, group: str, anchor: Deployment, fixed: RollbackRecord | None) -> list[Member]:
        """Each member in order, with the deployment the group's rollback undoes (or why none).

        ``fixed``: the open proposal being joined; its members stay those it was
        proposed with (its steps were written then), their deployments read again.
        """
        if fixed is not None and (known := group_of_record(fixed)) is not None:
            out = []
            for raw in known.get("members") or ():
                found = (
                    await self.store.deployment(raw["deployment_id"]) if raw.get("deployment_id") else None
                )
                out.append(Member(str(raw["service"]), found, raw.get("skipped")))
            return out
        members = []
        for service in self.order(group):
            if service == anchor.service:
                members.append(Member(service, anchor))
                continue
            newest = await self.store.deployments(limit=1, service=service)  # however old
            last = newest[0] if newest else None
            if last is None:
                members.append(Member(service, None, "no deployment registered: nothing to roll back"))
            elif last.state is not DeploymentState.WATCHING:
                members.append(
                    Member(service, None, f"no open deployment (its newest, {last.id}, is {last.state})")
                )
            else:
                members.append(Member(service, last))
        return members

    def policy(self, members: Sequence[Member]) -> Policy:
        world = self.world()
        policies = []
        for member in members:
            if member.service not in world.config.services:
                continue
            facts = member.deployment.facts if member.deployment is not None else None
            sql = facts.sql_policy if facts is not None else None
            policies.append(world.policy(member.service, sql, facts.backup_id if facts is not None else None))
        return group_policy(policies)

    async def policy_of(self, record: RollbackRecord) -> Policy:
        """The decision rules of a group's proposal, its members' deployments read again."""
        anchor = await self.store.deployment(record.deployment_id)
        group = (group_of_record(record) or {}).get("name")
        if anchor is None or group is None:
            return Policy()
        return self.policy(await self.members(str(group), anchor, record))

    def plan(
        self,
        group: str,
        anchor: Deployment,
        members: Sequence[Member],
        reasons: Sequence[Reason],
        dry_run: bool,
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The group's target as the journal keeps it, and its steps."""
        world = self.world()
        raw_members: list[dict[str, Any]] = []
        plans: list[tuple[str, Sequence[str]]] = []
        for member in members:
            entry: dict[str, Any] = {"service": member.service}
            if member.deployment is None or member.service not in world.config.services:
                entry["skipped"] = member.skipped or f"service '{member.service}' is no longer in the config"
                raw_members.append(entry)
                continue
            svc = world.service(member.service)
            own = [r for r in reasons if (r.service or anchor.service) == member.service]
            entry["deployment_id"] = member.deployment.id
            entry["target"] = target_of(member.deployment, own, svc, dry_run)
            raw_members.append(entry)
            plans.append((member.service, plan_steps(svc, member.deployment.facts.sql_policy)))
        target = target_of(anchor, reasons, world.service(anchor.service), dry_run)
        target["group"] = {"name": group, "members": raw_members}
        return target, group_steps(plans)


def _deployment_ids(record: RollbackRecord) -> set[str]:
    group = group_of_record(record) or {}
    return {str(m["deployment_id"]) for m in group.get("members") or () if m.get("deployment_id")}
