"""Deploy freezes: after a rollback, no new deployment of the service until an operator says so.

A rollback freezes the service for ``freeze_after_rollback`` (0: no freeze),
so the pipeline that shipped the bad release cannot ship it again at once. The
freeze lives in the state store: a restart or a failover keeps it. Operators
list, set and lift freezes; each change is audited and notified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from watchdogd.config.types import format_duration
from watchdogd.decisions import group_of_record, member_services
from watchdogd.errors import Conflict, NotFound, StoreError
from watchdogd.model import RollbackRecord
from watchdogd.store import Store
from watchdogd.store.actions import Freeze
from watchdogd.watch.report import SYSTEM, Reporter
from watchdogd.watch.world import World

log = structlog.get_logger("watchdogd")


class Frozen(Conflict):
    """409 ``frozen``: the service takes no new deployment until ``until``."""

    code = "frozen"

    def __init__(self, freeze: Freeze) -> None:
        super().__init__(
            f"{freeze.service} is frozen until {rfc3339(freeze.until)} by {freeze.by}: {freeze.reason}"
            f" (an operator lifts it: watchdogd ctl unfreeze {freeze.service})"
        )
        self.freeze = freeze

    @property
    def fields(self) -> dict[str, Any]:
        return {"freeze": freeze_json(self.freeze)}


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def freeze_json(freeze: Freeze) -> dict[str, Any]:
    return {
        "service": freeze.service,
        "reason": freeze.reason,
        "since": rfc3339(freeze.since),
        "until": rfc3339(freeze.until),
        "by": freeze.by,
        "rollback_id": freeze.rollback_id,
    }


def _detail(freeze: Freeze) -> dict[str, Any]:
    """What a report says of a freeze (its service and rollback are the report's own)."""
    return {k: v for k, v in freeze_json(freeze).items() if k not in ("service", "rollback_id")}


class Freezes:
    def __init__(
        self, store: Store, report: Reporter, world: Callable[[], World], clock: Callable[[], float]
    ):
        self.store = store
        self.report = report
        self.world = world
        self.clock = clock

    def duration(self, service: str) -> float:
        config = self.world().config
        svc = config.services.get(service)
        own = svc.freeze_after_rollback if svc is not None else None
        return own if own is not None else config.defaults.freeze_after_rollback

    async def check(self, service: str) -> None:
        """Raise ``Frozen`` when the service may take no new deployment now."""
        freeze = await self.store.frozen(service)
        if freeze is not None:
            raise Frozen(freeze)

    async def after_rollback(self, record: RollbackRecord, succeeded: bool) -> list[Freeze]:
        """Freeze the rolled back service (succeeded or not: a failed rollback needs hands, not deploys).

        A group's rollback freezes every member, each for its own ``freeze_after_rollback``.
        """
        group = group_of_record(record)
        made = []
        for service in member_services(record):
            freeze = await self._after_rollback(service, record, succeeded, group)
            if freeze is not None:
                made.append(freeze)
        return made

    async def _after_rollback(
        self, service: str, record: RollbackRecord, succeeded: bool, group: Mapping[str, Any] | None
    ) -> Freeze | None:
        seconds = self.duration(service)
        if seconds <= 0:
            return None
        outcome = "rolled back" if succeeded else "rollback failed"
        of_group = f"group {group.get('name')}, " if group is not None else ""
        reason = f"{outcome} ({of_group}rollback {record.id}, deployment {record.deployment_id})"
        try:
            freeze = await self.store.freeze(service, reason, self.clock() + seconds, SYSTEM, record.id)
        except StoreError as exc:  # the rollback is done and reported; the missing freeze is said loudly
            log.error("freeze_failed", service=service, rollback=record.id, error=str(exc))
            return None
        await self.report(
            "frozen",
            service=service,
            deployment_id=record.deployment_id,
            rollback_id=record.id,
            detail={**_detail(freeze), "for": format_duration(seconds)},
            summary=f"{service} frozen until {rfc3339(freeze.until)}: {freeze.reason}",
        )
        return freeze

    async def set(self, service: str, reason: str, seconds: float, actor: str) -> Freeze:
        self._known(service)
        freeze = await self.store.freeze(service, reason, self.clock() + seconds, actor)
        await self.report(
            "frozen",
            service=service,
            deployment_id=await self._latest(service),
            actor=actor,
            detail={**_detail(freeze), "for": format_duration(seconds)},
            summary=f"{service} frozen by {actor} until {rfc3339(freeze.until)}: {reason}",
        )
        return freeze

    async def lift(self, service: str, actor: str) -> Freeze:
        self._known(service)
        lifted = await self.store.unfreeze(service)
        if lifted is None:
            raise NotFound(f"{service} is not frozen")
        await self.report(
            "unfrozen",
            service=service,
            deployment_id=await self._latest(service),
            actor=actor,
            detail=_detail(lifted),
            summary=f"{service} unfrozen by {actor} (was: {lifted.reason})",
        )
        return lifted

    async def list(self) -> list[Freeze]:
        return await self.store.freezes()

    def _known(self, service: str) -> None:
        if service not in self.world().config.services:
            raise NotFound(f"no service '{service}' in the config")

    async def _latest(self, service: str) -> str | None:
        """The service's newest deployment: what a notification about the service is attached to."""
        newest = await self.store.deployments(limit=1, service=service)
        return newest[0].id if newest else None
