"""The state store: what a restart needs.

Deployments, every rule's evaluation state (with its timers, so a ``for``
window survives a restart), mutes, the audit trail, and the rollback journal.
``StateStore`` is the interface the daemon, the API and the executor use;
``Store`` keeps it in one SQLite file (extending ``Journal``), and
``watchdogd.pgstore.PgStore`` in PostgreSQL. ``open_store`` picks one by URL.
The schema is versioned: ``schema_version`` holds the version, and
``MIGRATIONS`` bring an older file up to date.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from watchdogd.config.types import redact_url
from watchdogd.errors import StoreError
from watchdogd.rollback.journal import Journal, RollbackRecord, RollbackState, StepState

DeploymentState = Literal["watching", "promoted", "rolling_back", "rolled_back", "rollback_failed"]
OPEN_STATES: tuple[DeploymentState, ...] = ("watching", "rolling_back")

SCHEMA_VERSION = 1
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    image TEXT,
    previous_image TEXT,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    window_ends_at REAL NOT NULL,
    finished_at REAL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_service ON deployments (service, started_at);
CREATE TABLE IF NOT EXISTS rule_states (
    deployment_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (deployment_id, rule)
);
CREATE TABLE IF NOT EXISTS mutes (
    service TEXT NOT NULL,
    rule TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (service, rule)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    deployment_id TEXT,
    rollback_id TEXT,
    detail TEXT NOT NULL
);
""",
}


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    service: str
    image: str | None
    previous_image: str | None
    state: DeploymentState
    started_at: float
    window_ends_at: float
    finished_at: float | None
    data: dict[str, Any]
    """Snapshots of the previous and current containers, migrations: what a rollback needs."""

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    actor: str
    action: str
    deployment_id: str | None
    rollback_id: str | None
    detail: dict[str, Any]


class RollbackJournal(Protocol):
    """The rollback journal: what the executor needs to run and resume a plan."""

    clock: Callable[[], float]

    async def create(
        self,
        deployment_id: str,
        service: str,
        steps: Sequence[str],
        reasons: list[dict[str, Any]],
        target: dict[str, Any],
        state: RollbackState = "pending",
        execute_at: float | None = None,
    ) -> RollbackRecord: ...

    async def add_reason(self, rollback_id: str, reason: dict[str, Any]) -> None: ...

    async def transition(
        self,
        rollback_id: str,
        to: RollbackState,
        allowed_from: Sequence[RollbackState],
        error: str | None = None,
    ) -> bool: ...

    async def step_started(self, rollback_id: str, position: int) -> None: ...

    async def step_finished(
        self, rollback_id: str, position: int, state: StepState, detail: str, error: str | None = None
    ) -> None: ...

    async def get(self, rollback_id: str) -> RollbackRecord | None: ...

    async def for_deployment(self, deployment_id: str) -> RollbackRecord | None: ...

    async def unfinished(self) -> list[RollbackRecord]: ...

    async def in_states(self, states: Sequence[RollbackState]) -> list[RollbackRecord]: ...


class StateStore(RollbackJournal, Protocol):
    """Everything the daemon and the API keep: the journal, deployments, rule states, mutes, audit.

    ``close()`` releases the store at once; ``aclose()`` lets in-flight calls
    finish first, and is the one to await on shutdown.
    """

    def close(self) -> None: ...

    async def aclose(self) -> None: ...

    async def add_deployment(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        started_at: float,
        window: float,
        data: dict[str, Any],
    ) -> Deployment: ...

    async def update_deployment(self, deployment_id: str, data: dict[str, Any]) -> None: ...

    async def set_deployment_state(
        self, deployment_id: str, state: DeploymentState, allowed_from: Sequence[DeploymentState]
    ) -> bool: ...

    async def deployment(self, deployment_id: str) -> Deployment | None: ...

    async def deployments(self, open_only: bool = False, limit: int = 200) -> list[Deployment]: ...

    async def save_rule_state(self, deployment_id: str, rule: str, state: dict[str, Any]) -> None: ...

    async def rule_states(self, deployment_id: str) -> dict[str, dict[str, Any]]: ...

    async def mute(self, service: str, rule: str, until: float) -> None: ...

    async def muted_until(self, service: str, rule: str) -> float | None: ...

    async def audit(
        self,
        actor: str,
        action: str,
        detail: dict[str, Any],
        deployment_id: str | None = None,
        rollback_id: str | None = None,
    ) -> None: ...

    async def audit_entries(
        self,
        deployment_id: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 500,
    ) -> list[AuditEntry]: ...


async def open_store(url: str, clock: Callable[[], float] | None = None) -> StateStore:
    """The store a ``state.url`` names: ``sqlite:///PATH``, or ``postgresql://...`` (``postgres://``)."""
    if url.startswith("sqlite:///"):
        return Store(url.removeprefix("sqlite:///") or ":memory:", clock)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so that a SQLite set-up never loads the PostgreSQL driver.
        from watchdogd.pgstore import PgStore

        return await PgStore.open(url, clock=clock)
    raise StoreError(
        f"unsupported state store '{redact_url(url)}': use sqlite:///PATH or postgresql://USER@HOST/DB"
    )


class Store(Journal):
    """Journal plus deployments, rule states, mutes and the audit trail."""

    def __init__(self, path: str, clock: Any = None) -> None:
        if clock is None:
            super().__init__(path)
        else:
            super().__init__(path, clock)
        try:
            self._migrate()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"state store {self.path}: {exc}") from None
        except StoreError:
            self.close()
            raise

    @classmethod
    def open_url(cls, url: str) -> Store:
        """A SQLite store only; ``open_store`` also takes PostgreSQL."""
        if not url.startswith("sqlite:///"):
            raise StoreError(f"unsupported state store '{redact_url(url)}': use sqlite:///PATH")
        return cls(url.removeprefix("sqlite:///") or ":memory:")

    async def aclose(self) -> None:
        self.close()

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"state store {self.path} has schema version {current}, newer than this watchdogd "
                f"({SCHEMA_VERSION}): upgrade watchdogd or point it at another file"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            db.executescript(MIGRATIONS[version])
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    # --- deployments ----------------------------------------------------------------------

    async def add_deployment(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        started_at: float,
        window: float,
        data: dict[str, Any],
    ) -> Deployment:
        """A new deployment being watched; an open one of the same service is superseded."""
        deployment_id = uuid.uuid4().hex[:12]

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "UPDATE deployments SET state = 'promoted', finished_at = ?"
                    " WHERE service = ? AND state = 'watching'",
                    (started_at, service),
                )
                db.execute(
                    "INSERT INTO deployments (id, service, image, previous_image, state, started_at,"
                    " window_ends_at, data) VALUES (?, ?, ?, ?, 'watching', ?, ?, ?)",
                    (
                        deployment_id,
                        service,
                        image,
                        previous_image,
                        started_at,
                        started_at + window,
                        json.dumps(data),
                    ),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(write)
        found = await self.deployment(deployment_id)
        assert found is not None
        return found

    async def update_deployment(self, deployment_id: str, data: dict[str, Any]) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE deployments SET data = ? WHERE id = ?", (json.dumps(data), deployment_id)
            )
        )

    async def set_deployment_state(
        self, deployment_id: str, state: DeploymentState, allowed_from: Sequence[DeploymentState]
    ) -> bool:
        now = self.clock()
        final = state in ("promoted", "rolled_back", "rollback_failed")
        placeholders = ", ".join("?" for _ in allowed_from)
        sql = (
            f"UPDATE deployments SET state = ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
            f" WHERE id = ? AND state IN ({placeholders})"
        )

        def write(db: sqlite3.Connection) -> bool:
            return db.execute(sql, (state, final, now, deployment_id, *allowed_from)).rowcount == 1

        return await self._run(write)

    async def deployment(self, deployment_id: str) -> Deployment | None:
        rows = await self._deployments("id = ?", (deployment_id,))
        return rows[0] if rows else None

    async def deployments(self, open_only: bool = False, limit: int = 200) -> list[Deployment]:
        if open_only:
            return await self._deployments("state IN ('watching', 'rolling_back')", ())
        return await self._deployments("1 = 1", (), limit)

    async def _deployments(self, where: str, params: tuple[Any, ...], limit: int = 1000) -> list[Deployment]:
        def read(db: sqlite3.Connection) -> list[Deployment]:
            rows = db.execute(
                "SELECT id, service, image, previous_image, state, started_at, window_ends_at, finished_at,"
                " data"
                f" FROM deployments WHERE {where} ORDER BY started_at DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [_deployment(row) for row in rows]

        return await self._run(read)

    # --- rule states ----------------------------------------------------------------------

    async def save_rule_state(self, deployment_id: str, rule: str, state: dict[str, Any]) -> None:
        text = json.dumps(state)

        def save(db: sqlite3.Connection) -> None:
            # Rewritten at every evaluation (hundreds a second at scale), so this commit
            # skips the fsync: in WAL mode it survives the process dying, and a power loss
            # only restores an older rule state. The next FULL commit makes it durable.
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute(
                    "INSERT INTO rule_states (deployment_id, rule, state) VALUES (?, ?, ?)"
                    " ON CONFLICT (deployment_id, rule) DO UPDATE SET state = excluded.state",
                    (deployment_id, rule, text),
                )
            finally:
                db.execute("PRAGMA synchronous=FULL")

        await self._run(save)

    async def rule_states(self, deployment_id: str) -> dict[str, dict[str, Any]]:
        def read(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            rows = db.execute("SELECT rule, state FROM rule_states WHERE deployment_id = ?", (deployment_id,))
            return {rule: json.loads(state) for rule, state in rows}

        return await self._run(read)

    # --- mutes ----------------------------------------------------------------------------

    async def mute(self, service: str, rule: str, until: float) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO mutes (service, rule, until) VALUES (?, ?, ?)"
                " ON CONFLICT (service, rule) DO UPDATE SET until = MAX(until, excluded.until)",
                (service, rule, until),
            )
        )

    async def muted_until(self, service: str, rule: str) -> float | None:
        def read(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT until FROM mutes WHERE service = ? AND rule = ?", (service, rule)
            ).fetchone()
            return float(row[0]) if row else None

        return await self._run(read)

    # --- audit ----------------------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        action: str,
        detail: dict[str, Any],
        deployment_id: str | None = None,
        rollback_id: str | None = None,
    ) -> None:
        now = self.clock()
        text = json.dumps(detail, default=str)
        await self._run(
            lambda db: db.execute(
                "INSERT INTO audit (at, actor, action, deployment_id, rollback_id, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (now, actor, action, deployment_id, rollback_id, text),
            )
        )

    async def audit_entries(
        self,
        deployment_id: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 500,
    ) -> list[AuditEntry]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("deployment_id", deployment_id), ("actor", actor)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("at >= ?")
            params.append(since)
        where = " AND ".join(clauses) or "1 = 1"

        def read(db: sqlite3.Connection) -> list[AuditEntry]:
            rows = db.execute(
                "SELECT seq, at, actor, action, deployment_id, rollback_id, detail FROM audit"
                f" WHERE {where} ORDER BY seq LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [
                AuditEntry(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6])) for row in rows
            ]

        return await self._run(read)


def _deployment(row: Sequence[Any]) -> Deployment:
    return Deployment(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], json.loads(row[8]))
