"""The sql step's dedicated connection: connected, its role checked, the ledger ready, the locks held.

One connection (``application_name=watchdogd``, TCP keepalives) per run,
holding the service's session advisory lock and, with a Prisma or Sqitch
migration table, the migrator's own lock; a lock still busy after
``database.lock_wait`` fails with its holders named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import structlog

from watchdogd.config.models import DatabaseConfig
from watchdogd.rollback import sqlledger
from watchdogd.rollback.sqlerrors import LOST, _Failed, _postgres_reason
from watchdogd.rollback.sqlledger import advisory_key
from watchdogd.rollback.sqltables import MIGRATOR_LOCKS

log = structlog.get_logger("watchdogd.rollback")

_LOCK_HOLDER = """
SELECT a.pid, a.application_name, a.client_addr::text AS addr, a.backend_start, a.state, a.query
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::int8 = $1 AND l.objid::int8 = $2
"""
_MIGRATOR_HOLDER = """
SELECT a.pid, a.application_name, a.client_addr::text AS addr, a.backend_start, a.state, a.query
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.objid::int8 = $1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}
"""The server notices a vanished watchdogd within about a minute and rolls its transaction back."""
SUPERUSER = """
SELECT current_user::text, current_setting('is_superuser') = 'on'
    OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
"""
_LOCK_POLL_FIRST = 0.05
_LOCK_POLL_MAX = 1.0


@dataclass(slots=True)
class _Session:
    """The dedicated connection and the advisory lock it holds."""

    conn: asyncpg.Connection
    key: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Sessions:
    """Opens, reopens and closes the sql step's sessions; ``sleep`` paces the waits for a busy lock."""

    connect_timeout: float
    sleep: Callable[[float], Awaitable[None]]

    async def connect(self, database: DatabaseConfig) -> asyncpg.Connection:
        dsn = database.dsn.secret()
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                dsn,
                timeout=self.connect_timeout,
                # every call is bounded on this side too: the server's timeouts plus a margin
                command_timeout=database.lock_timeout + database.statement_timeout + self.connect_timeout,
                server_settings={"application_name": "watchdogd", **KEEPALIVES},
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            message = str(exc)
            password = urlsplit(dsn).password
            if password:
                message = message.replace(password, "***")
            lost = None if isinstance(exc, asyncpg.PostgresError) else LOST
            raise _Failed(f"cannot connect to {database.dsn}: {type(exc).__name__}: {message}", lost) from exc
        if not database.allow_superuser:
            try:
                row = await conn.fetchrow(SUPERUSER)
            except BaseException as exc:
                conn.terminate()
                if isinstance(exc, asyncpg.PostgresError):
                    raise _Failed(f"cannot read the role of {database.dsn}: {_postgres_reason(exc)}") from exc
                raise
            user, superuser = (row[0], row[1]) if row is not None else ("?", False)
            if superuser:
                await conn.close()
                raise _Failed(
                    f"refused: {database.dsn} connects as {user}, a PostgreSQL superuser; give watchdogd a "
                    "role that owns the service's schema, or set database.allow_superuser: true"
                )
        return conn

    async def open(self, service: str, database: DatabaseConfig) -> _Session:
        """Connects, makes sure the ledger exists and takes the advisory lock."""
        conn = await self.connect(database)
        try:
            await sqlledger.ensure(conn)
            key = advisory_key(service, await conn.fetchval("SELECT current_database()"))
            await self._lock(conn, key, database.lock_wait)
            table = database.migrations_table
            if table is not None and table.kind in MIGRATOR_LOCKS:
                await self._migrator_lock(conn, table.kind, database.lock_wait)
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, asyncpg.PostgresError):
                raise _Failed(f"preparing the ledger failed: {_postgres_reason(exc)}") from exc
            raise
        return _Session(conn, key)

    async def reconnect(self, session: _Session, service: str, database: DatabaseConfig) -> None:
        """A new connection and advisory lock for ``session`` (the server restarted, or cut it off).

        When the server is not back yet the session keeps its dead connection: the
        next attempt fails at once as lost, and the caller's retries bound the wait.
        """
        session.conn.terminate()
        try:
            fresh = await self.open(service, database)
        except (_Failed, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("sql_reconnect_failed", service=service, error=str(exc))
            return
        session.conn, session.key = fresh.conn, fresh.key
        log.info("sql_reconnected", service=service)

    async def _lock(self, conn: asyncpg.Connection, key: tuple[int, int], wait: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = _LOCK_POLL_FIRST
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
            left = deadline - loop.time()
            if left <= 0:
                holders = await conn.fetch(_LOCK_HOLDER, key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF)
                raise _Failed(f"advisory lock {key} still busy after {wait:g}s; {_holders(holders)}")
            await self.sleep(min(delay, left))
            delay = min(delay * 2, _LOCK_POLL_MAX)

    async def _migrator_lock(self, conn: asyncpg.Connection, kind: str, wait: float) -> None:
        """The app migrator's own lock (Prisma's, Sqitch's), held for the session: no ``migrate deploy``
        or ``sqitch deploy`` runs meanwhile."""
        lock = MIGRATOR_LOCKS[kind]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = _LOCK_POLL_FIRST
        while not await conn.fetchval(f"SELECT pg_try_advisory_lock({lock})"):
            left = deadline - loop.time()
            if left <= 0:
                holders = await conn.fetch(_MIGRATOR_HOLDER, lock)
                tool = "Prisma" if kind == "prisma" else kind.capitalize()
                raise _Failed(
                    f"{tool}'s migration lock (advisory lock {lock}) still busy after {wait:g}s: "
                    f"a migrate is running; {_holders(holders)}"
                )
            await self.sleep(min(delay, left))
            delay = min(delay * 2, _LOCK_POLL_MAX)

    async def close(self, session: _Session) -> None:
        conn = session.conn
        if conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
            await conn.close(timeout=self.connect_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()  # the server releases the session lock with the session


def _holders(rows: Sequence[asyncpg.Record]) -> str:
    if not rows:
        return "its holder has just left"
    parts = []
    for r in rows:
        query = " ".join((r["query"] or "").split())[:120]
        parts.append(
            f"held by pid {r['pid']} application_name={r['application_name']!r} "
            f"client {r['addr'] or 'local socket'} connected since {r['backend_start'].isoformat()} "
            f"state {r['state']} last query {query!r}"
        )
    return "; ".join(parts)
