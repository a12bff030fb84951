"""The state store in one SQLite file.

WAL mode with full sync: an entry is on disk when the call returns, so a
watchdogd killed at any point finds on restart which steps are done, which one
was running and which are left. One connection; calls are short, run in a
thread and are serialised by a lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from watchdogd.clock import now as steady
from watchdogd.errors import StoreError
from watchdogd.store.deployments import SqlStore
from watchdogd.store.schema import SQLITE_MIGRATIONS
from watchdogd.store.sql import Done, Mode, Op, advance

T = TypeVar("T")

_BEGIN = {Mode.READ: "BEGIN", Mode.WRITE: "BEGIN IMMEDIATE"}
"""IMMEDIATE takes the write lock at once: a read-then-write never meets another writer."""


class SqliteStore(SqlStore):
    """The store in the file at ``path`` (``:memory:`` for tests that need no disk)."""

    def __init__(self, path: str | Path, clock: Callable[[], float] | None = None) -> None:
        self.path = str(path)
        super().__init__(clock or steady, prefix="", where=self.path, unit="file")
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc
        try:
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
                self._db.execute(f"PRAGMA {pragma}")
            self._execute(self._migrate(SQLITE_MIGRATIONS), Mode.WRITE)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"state store {self.path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def _run(self, op: Op[T], mode: Mode) -> T:
        return await asyncio.to_thread(self._execute, op, mode)

    def _execute(self, op: Op[T], mode: Mode) -> T:
        with self._lock:
            db = self._db
            try:
                if mode is Mode.LAZY:
                    # Rule states are rewritten at every evaluation (hundreds a second at
                    # scale), so their commit skips the fsync: in WAL mode it survives the
                    # process dying; a power loss only restores an older rule state.
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.execute("BEGIN IMMEDIATE")  # a round's states in one commit
                elif mode in _BEGIN:
                    db.execute(_BEGIN[mode])
                try:
                    result = self._drive(op)
                    if db.in_transaction:
                        db.execute("COMMIT")
                    return result
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                finally:
                    if mode is Mode.LAZY:
                        db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise StoreError(f"state store {self.path}: {exc}") from exc

    def _drive(self, op: Op[T]) -> T:
        result: Any = None
        while not isinstance(step := advance(op, result), Done):
            cursor = self._db.execute(step.sql, step.params)
            result = cursor.fetchall() if step.rows else cursor.rowcount
        return step.value
