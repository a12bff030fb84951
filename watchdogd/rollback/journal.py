"""The rollback journal: every plan and step written down before and after it runs.

SQLite, in WAL mode with full sync, so that an entry is on disk when the call
returns: a watchdogd killed at any point finds on restart which steps are done,
which one was running (it runs again: steps are idempotent), and which are left.
Calls are short and run in a thread; one connection, serialised by a lock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from watchdogd.clock import now as steady
from watchdogd.errors import StoreError

RollbackState = Literal[
    "pending", "awaiting_approval", "executing", "succeeded", "failed", "vetoed", "dry_run"
]
StepState = Literal["pending", "running", "done", "failed", "skipped"]
FINAL_STATES = ("succeeded", "failed", "vetoed", "dry_run")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollbacks (
    id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    reasons TEXT NOT NULL,
    target TEXT NOT NULL,
    proposed_at REAL NOT NULL,
    execute_at REAL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS rollback_steps (
    rollback_id TEXT NOT NULL REFERENCES rollbacks(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    detail TEXT,
    PRIMARY KEY (rollback_id, position)
);
"""


@dataclass(frozen=True, slots=True)
class StepRecord:
    position: int
    name: str
    state: StepState
    attempts: int
    started_at: float | None
    finished_at: float | None
    error: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    id: str
    deployment_id: str
    service: str
    state: RollbackState
    reasons: list[dict[str, Any]]
    target: dict[str, Any]
    proposed_at: float
    execute_at: float | None
    started_at: float | None
    finished_at: float | None
    error: str | None
    steps: tuple[StepRecord, ...]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class Journal:
    """Rollbacks and their steps in a SQLite file (``:memory:`` for tests that need no disk)."""

    def __init__(self, path: str | Path, clock: Any = steady) -> None:
        self.path = str(path)
        self.clock = clock
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"state store {self.path}: {exc}") from None

    @classmethod
    def from_url(cls, url: str) -> Journal:
        """``sqlite:////abs/path.db`` or ``sqlite:///relative.db``."""
        if not url.startswith("sqlite:///"):
            raise StoreError(f"unsupported state store '{url}': use sqlite:///PATH")
        return cls(url.removeprefix("sqlite:///") or ":memory:")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes ---------------------------------------------------------------------------

    async def create(
        self,
        deployment_id: str,
        service: str,
        steps: Sequence[str],
        reasons: list[dict[str, Any]],
        target: dict[str, Any],
        state: RollbackState = "pending",
        execute_at: float | None = None,
    ) -> RollbackRecord:
        """A new rollback with its plan; the existing one when the deployment already has one."""
        rollback_id = uuid.uuid4().hex[:12]
        now = self.clock()

        def write(db: sqlite3.Connection) -> str:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT id FROM rollbacks WHERE deployment_id = ?", (deployment_id,)
                ).fetchone()
                if row is not None:
                    db.execute("COMMIT")
                    return str(row[0])
                db.execute(
                    "INSERT INTO rollbacks (id, deployment_id, service, state, reasons, target, proposed_at,"
                    " execute_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rollback_id,
                        deployment_id,
                        service,
                        state,
                        json.dumps(reasons),
                        json.dumps(target),
                        now,
                        execute_at,
                    ),
                )
                db.executemany(
                    "INSERT INTO rollback_steps (rollback_id, position, name, state)"
                    " VALUES (?, ?, ?, 'pending')",
                    [(rollback_id, i, name) for i, name in enumerate(steps)],
                )
                db.execute("COMMIT")
                return rollback_id
            except BaseException:
                db.execute("ROLLBACK")
                raise

        found = await self._run(write)
        record = await self.get(found)
        assert record is not None
        return record

    async def add_reason(self, rollback_id: str, reason: dict[str, Any]) -> None:
        """Another firing rule joins the proposal as one more reason."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT reasons FROM rollbacks WHERE id = ?", (rollback_id,)).fetchone()
            if row is not None:
                reasons = json.loads(row[0])
                reasons.append(reason)
                db.execute(
                    "UPDATE rollbacks SET reasons = ? WHERE id = ?", (json.dumps(reasons), rollback_id)
                )
            db.execute("COMMIT")

        await self._run(write)

    async def transition(
        self,
        rollback_id: str,
        to: RollbackState,
        allowed_from: Sequence[RollbackState],
        error: str | None = None,
    ) -> bool:
        """Move the rollback to ``to`` only from one of ``allowed_from``; False when it was elsewhere.

        This is the atomic decision between a veto and the execution: whichever
        writes first wins, the other sees False.
        """
        now = self.clock()
        marks = {"executing": "started_at = COALESCE(started_at, ?)"}
        finals = set(FINAL_STATES)
        sets = ["state = ?"]
        params: list[Any] = [to]
        if to in marks:
            sets.append(marks[to])
            params.append(now)
        if to in finals:
            sets.append("finished_at = ?")
            params.append(now)
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        placeholders = ", ".join("?" for _ in allowed_from)
        sql = f"UPDATE rollbacks SET {', '.join(sets)} WHERE id = ? AND state IN ({placeholders})"

        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(sql, (*params, rollback_id, *allowed_from))
            return cursor.rowcount == 1

        return await self._run(write)

    async def step_started(self, rollback_id: str, position: int) -> None:
        now = self.clock()
        await self._run(
            lambda db: db.execute(
                "UPDATE rollback_steps SET state = 'running', attempts = attempts + 1,"
                " started_at = COALESCE(started_at, ?), error = NULL WHERE rollback_id = ? AND position = ?",
                (now, rollback_id, position),
            )
        )

    async def step_finished(
        self, rollback_id: str, position: int, state: StepState, detail: str, error: str | None = None
    ) -> None:
        now = self.clock()
        await self._run(
            lambda db: db.execute(
                "UPDATE rollback_steps SET state = ?, finished_at = ?, detail = ?, error = ?"
                " WHERE rollback_id = ? AND position = ?",
                (state, now, detail, error, rollback_id, position),
            )
        )

    # --- reads ----------------------------------------------------------------------------

    async def get(self, rollback_id: str) -> RollbackRecord | None:
        return await self._run(lambda db: _read(db, "id = ?", (rollback_id,)))

    async def for_deployment(self, deployment_id: str) -> RollbackRecord | None:
        return await self._run(lambda db: _read(db, "deployment_id = ?", (deployment_id,)))

    async def unfinished(self) -> list[RollbackRecord]:
        """Rollbacks that were executing when the process stopped: to be resumed."""
        return await self.in_states(("executing",))

    async def in_states(self, states: Sequence[RollbackState]) -> list[RollbackRecord]:
        """Rollbacks in any of ``states``, oldest proposal first."""
        placeholders = ", ".join("?" for _ in states)

        def read(db: sqlite3.Connection) -> list[RollbackRecord]:
            rows = db.execute(
                f"SELECT id FROM rollbacks WHERE state IN ({placeholders}) ORDER BY proposed_at",
                tuple(states),
            )
            ids = [r[0] for r in rows]
            return [rec for i in ids if (rec := _read(db, "id = ?", (i,))) is not None]

        return await self._run(read)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return work(self._db)
                except sqlite3.Error as exc:
                    raise StoreError(f"state store {self.path}: {exc}") from None

        return await asyncio.to_thread(locked)


def _read(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> RollbackRecord | None:
    row = db.execute(
        "SELECT id, deployment_id, service, state, reasons, target, proposed_at, execute_at, started_at,"
        f" finished_at, error FROM rollbacks WHERE {where}",
        params,
    ).fetchone()
    if row is None:
        return None
    steps = tuple(
        StepRecord(*step)
        for step in db.execute(
            "SELECT position, name, state, attempts, started_at, finished_at, error, detail"
            " FROM rollback_steps WHERE rollback_id = ? ORDER BY position",
            (row[0],),
        )
    )
    return RollbackRecord(
        id=row[0],
        deployment_id=row[1],
        service=row[2],
        state=row[3],
        reasons=json.loads(row[4]),
        target=json.loads(row[5]),
        proposed_at=row[6],
        execute_at=row[7],
        started_at=row[8],
        finished_at=row[9],
        error=row[10],
        steps=steps,
    )
