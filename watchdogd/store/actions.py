"""Freezes and command runs, written once for both databases.

A freeze is a row per service that holds until its ``until``; an expired one
is ignored where it is read and removed when the service is frozen again. A
command run records that a ``command:NAME`` step of a deployment's rollback
started and how it ended, so that a resumed plan does not run a finished
program twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from watchdogd.store.sql import Mode, Op, SqlBase, change, fetch


@dataclass(frozen=True, slots=True)
class Freeze:
    service: str
    reason: str
    since: float
    until: float
    by: str
    rollback_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "reason": self.reason,
            "since": self.since,
            "until": self.until,
            "by": self.by,
            "rollback_id": self.rollback_id,
        }


@dataclass(frozen=True, slots=True)
class CommandRun:
    """``state``: ``running`` (started, no outcome seen), ``finished`` or ``abandoned``."""

    deployment_id: str
    step: str
    state: str
    started_at: float
    finished_at: float | None
    exit_code: int | None
    detail: str | None


_FREEZE_COLUMNS = "service, reason, since, until, actor, rollback_id"
_RUN_COLUMNS = "deployment_id, step, state, started_at, finished_at, exit_code, detail"


class ActionTables(SqlBase):
    """The ``Store`` calls on freezes and command runs."""

    # --- freezes --------------------------------------------------------------------------

    async def freeze(
        self, service: str, reason: str, until: float, by: str, rollback_id: str | None = None
    ) -> Freeze:
        """Freeze ``service`` until ``until``; an existing freeze is replaced (a longer one is kept)."""
        return await self._run(
            self._freeze(service, reason, until, by, rollback_id, self.clock()), Mode.WRITE
        )

    def _freeze(
        self, service: str, reason: str, until: float, by: str, rollback_id: str | None, now: float
    ) -> Op[Freeze]:
        p = self._p
        found = yield from fetch(f"SELECT {_FREEZE_COLUMNS} FROM {p}freezes WHERE service = ?", service)
        if found and float(found[0][3]) > now and float(found[0][3]) > until and by == "watchdogd":
            return _freeze_row(found[0])  # a rollback does not shorten an operator's longer freeze
        yield from change(f"DELETE FROM {p}freezes WHERE service = ?", service)
        yield from change(
            f"INSERT INTO {p}freezes ({_FREEZE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            service,
            reason,
            now,
            until,
            by,
            rollback_id,
        )
        return Freeze(service, reason, now, until, by, rollback_id)

    async def unfreeze(self, service: str) -> Freeze | None:
        """Lift the service's freeze; the one lifted (None when it had none in force)."""
        return await self._run(self._unfreeze(service, self.clock()), Mode.WRITE)

    def _unfreeze(self, service: str, now: float) -> Op[Freeze | None]:
        p = self._p
        found = yield from fetch(f"SELECT {_FREEZE_COLUMNS} FROM {p}freezes WHERE service = ?", service)
        yield from change(f"DELETE FROM {p}freezes WHERE service = ?", service)
        if not found or float(found[0][3]) <= now:
            return None
        return _freeze_row(found[0])

    async def freezes(self) -> list[Freeze]:
        """The freezes in force now, soonest to end first."""
        op = fetch(
            f"SELECT {_FREEZE_COLUMNS} FROM {self._p}freezes WHERE until > ? ORDER BY until, service",
            self.clock(),
        )
        return [_freeze_row(row) for row in await self._run(op, Mode.ONE)]

    async def frozen(self, service: str) -> Freeze | None:
        op = fetch(
            f"SELECT {_FREEZE_COLUMNS} FROM {self._p}freezes WHERE service = ? AND until > ?",
            service,
            self.clock(),
        )
        found = await self._run(op, Mode.ONE)
        return _freeze_row(found[0]) if found else None

    # --- command runs ---------------------------------------------------------------------

    async def command_run(self, deployment_id: str, step: str) -> CommandRun | None:
        op = fetch(
            f"SELECT {_RUN_COLUMNS} FROM {self._p}command_runs WHERE deployment_id = ? AND step = ?",
            deployment_id,
            step,
        )
        found = await self._run(op, Mode.ONE)
        if not found:
            return None
        row = found[0]
        return CommandRun(
            row[0],
            row[1],
            row[2],
            float(row[3]),
            None if row[4] is None else float(row[4]),
            None if row[5] is None else int(row[5]),
            row[6],
        )

    async def command_started(self, deployment_id: str, step: str) -> None:
        p = self._p
        op = change(
            f"INSERT INTO {p}command_runs ({_RUN_COLUMNS}) VALUES (?, ?, 'running', ?, NULL, NULL, NULL)"
            " ON CONFLICT (deployment_id, step) DO UPDATE SET state = 'running',"
            " started_at = excluded.started_at, finished_at = NULL, exit_code = NULL, detail = NULL",
            deployment_id,
            step,
            self.clock(),
        )
        await self._run(op, Mode.ONE)

    async def command_ended(
        self, deployment_id: str, step: str, state: str, exit_code: int | None, detail: str
    ) -> None:
        op = change(
            f"UPDATE {self._p}command_runs SET state = ?, finished_at = ?, exit_code = ?, detail = ?"
            " WHERE deployment_id = ? AND step = ?",
            state,
            self.clock(),
            exit_code,
            detail,
            deployment_id,
            step,
        )
        await self._run(op, Mode.ONE)


def _freeze_row(row: Any) -> Freeze:
    return Freeze(row[0], row[1], float(row[2]), float(row[3]), row[4], row[5])
