"""Leader election: several replicas share one PostgreSQL state, one of them acts.

The leader evaluates rules, decides and executes rollbacks; the others serve
the API from the shared store and wait to take over. The lock is a PostgreSQL
session advisory lock held on a dedicated connection: it lives exactly as long
as that connection, so a leader killed (or cut off) releases it and the next
replica to ask gets it. With SQLite there is one process, always the leader.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import structlog

from watchdogd.config.types import redact_url
from watchdogd.errors import StoreError

log = structlog.get_logger("watchdogd.leader")

POLL = 1.5
"""Seconds between two attempts of a follower to take the lock (and of a leader to check it)."""
CHECK_TIMEOUT = 5.0
"""A leader whose lock connection does not answer within this long steps down."""
CONNECT_TIMEOUT = 10.0
if TYPE_CHECKING:
    import asyncpg


def _lost() -> tuple[type[BaseException], ...]:
    """What ends a lock's session; asyncpg is imported only where a PostgreSQL state is used."""
    import asyncpg

    return (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


"""What a lock connection that went away raises (the last: the driver's state broken mid-call)."""


class Election(Protocol):
    """Whether this process leads; ``campaign`` tries to (or checks it still does)."""

    shared: bool
    """Whether other replicas may share the state (an election takes place)."""

    @property
    def leading(self) -> bool: ...

    async def campaign(self) -> bool:
        """Take the lock if free, or confirm it is still held; returns ``leading``."""
        ...

    async def resign(self) -> None: ...


class Solo:
    """No election: the only process is the leader (the SQLite store)."""

    shared = False

    @property
    def leading(self) -> bool:
        return True

    async def campaign(self) -> bool:
        return True

    async def resign(self) -> None:
        return None


class AdvisoryLock:
    """Leadership as a PostgreSQL session advisory lock on a connection of its own."""

    shared = True

    def __init__(self, dsn: str, name: str) -> None:
        self._dsn = dsn
        self.where = redact_url(dsn)
        self.name = name
        """The lock's name; its 64-bit key is ``hashtextextended(name, 0)``."""
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._leading = False

    @property
    def leading(self) -> bool:
        return self._leading

    async def campaign(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                if self._leading:
                    # The lock went with its session: step down now, even if it is free to take again,
                    # so that this replica picks the state up anew (another may have led meanwhile).
                    log.error("leadership_lost", store=self.where, error="the lock connection closed")
                    self._leading = False
                    await self._drop()
                    return False
                import asyncpg

                self._conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
            if self._leading:
                # A session lock cannot be lost while its connection lives: check the connection.
                await self._conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT)
            else:
                got = await self._conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", self.name, timeout=CHECK_TIMEOUT
                )
                self._leading = bool(got)
        except _lost() as exc:
            if self._leading:
                log.error("leadership_lost", store=self.where, error=f"{type(exc).__name__}: {exc}")
            self._leading = False
            await self._drop()
        return self._leading

    async def resign(self) -> None:
        """Release the lock (closing its connection does it), so another replica leads at once."""
        self._leading = False
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), CHECK_TIMEOUT)
            except _lost():
                conn.terminate()


def election_for(url: str, schema: str | None) -> Election:
    """The election a ``state.url`` calls for: a lock per state schema on PostgreSQL, none on SQLite."""
    if url.startswith(("postgresql://", "postgres://")):
        if not schema:
            raise StoreError(f"state store {redact_url(url)}: no schema to elect a leader on")
        return AdvisoryLock(url, f"watchdogd-leader:{schema}")
    return Solo()
