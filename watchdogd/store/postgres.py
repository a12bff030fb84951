"""The state store in PostgreSQL.

All tables live in one schema (``watchdogd_state`` unless told otherwise), so
a database shared with the application keeps watchdogd's state apart. The
schema is made or brought up to date at open under a transaction-level
advisory lock, so two replicas starting together do not both try. Times are
double precision; JSON is text, as in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg

from watchdogd.clock import now as steady
from watchdogd.config.types import redact_url
from watchdogd.errors import StoreError
from watchdogd.store.deployments import SqlStore
from watchdogd.store.schema import POSTGRES_MIGRATIONS
from watchdogd.store.sql import Done, Mode, Op, advance, change, fetch

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

DEFAULT_SCHEMA = "watchdogd_state"
POOL_SIZE = 4
"""The daemon's store calls are short and few at a time; four connections leave room for a slow one."""
CONNECT_TIMEOUT = 10.0
"""A server that does not answer within this at start is reported, not waited on forever."""
COMMAND_TIMEOUT = 30.0
"""A statement stuck on a lock this long fails the call instead of freezing the daemon's loop."""
CLOSE_TIMEOUT = 10.0
"""How long ``aclose`` lets in-flight calls finish before cutting the connections."""

_DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))"


class PgStore(SqlStore):
    """The store in ``schema`` of a PostgreSQL database; ``open_store`` opens one from a URL."""

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], where: str, schema: str, clock: Callable[[], float]
    ) -> None:
        super().__init__(
            clock, prefix=f"{_quote_ident(schema)}.", where=f"{where} (schema {schema})", unit="schema"
        )
        self._pool = pool
        self.where = where
        """The DSN with its password masked."""
        self.schema = schema

    @classmethod
    async def open(
        cls, dsn: str, schema: str = DEFAULT_SCHEMA, clock: Callable[[], float] | None = None
    ) -> PgStore:
        """Connect, then create or upgrade the schema; StoreError when either fails."""
        where = redact_url(dsn)
        if not schema:
            raise StoreError(f"state store {where}: the schema name is empty")
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except (*_DRIVER_ERRORS, ValueError) as exc:
            raise StoreError(f"state store {where}: cannot connect: {_describe(exc, dsn)}") from exc
        store = cls(pool, where, schema, clock or steady)
        try:
            await store._run(store._create(), Mode.WRITE)
        except BaseException:
            store.close()
            raise
        return store

    def _create(self) -> Op[None]:
        # Held to the end of the transaction: a second replica waits here, then finds the work done.
        yield from fetch(_LOCK, f"watchdogd:{self.schema}")
        s = _quote_ident(self.schema)
        yield from change(f"CREATE SCHEMA IF NOT EXISTS {s}")
        yield from self._migrate({version: ddl.format(s=s) for version, ddl in POSTGRES_MIGRATIONS.items()})

    def _serialize(self, key: str) -> Op[None]:
        # Read committed lets two transactions read the same "nothing there yet"; the
        # lock makes the second read after the first one's commit.
        yield from fetch(_LOCK, f"watchdogd:{self.schema}:{key}")

    def close(self) -> None:
        self._pool.terminate()

    async def aclose(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"state store {self.where}: {_describe(exc, None)}") from exc

    async def _run(self, op: Op[T], mode: Mode) -> T:
        async with self._connection() as conn:
            transaction: contextlib.AbstractAsyncContextManager[Any]
            if mode is Mode.READ:
                transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            elif mode in (Mode.WRITE, Mode.LAZY):
                transaction = conn.transaction()
            else:
                transaction = contextlib.nullcontext()
            async with transaction:
                if mode is Mode.LAZY:
                    # rule states, a round of them per commit: a crash of the server may lose
                    # the latest round (a restart resumes from the one before), never corrupt it
                    await conn.execute("SET LOCAL synchronous_commit TO OFF")
                return await _drive(conn, op)


async def _drive(conn: Connection, op: Op[T]) -> T:
    result: Any = None
    while not isinstance(step := advance(op, result), Done):
        if step.rows:
            result = [tuple(record) for record in await conn.fetch(_numbered(step.sql), *step.params)]
        else:
            result = _rowcount(await conn.execute(_numbered(step.sql), *step.params))
    return step.value


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no statement holds a ``?`` of its own)."""
    first, *rest = sql.split("?")
    return first + "".join(f"${n}{part}" for n, part in enumerate(rest, start=1))


def _rowcount(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 1``; 0 for one without (``CREATE TABLE``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _describe(exc: BaseException, dsn: str | None) -> str:
    """The driver's message, with the DSN's password masked should the driver have echoed it."""
    text = str(exc) or type(exc).__name__
    if dsn is not None:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
        text = text.replace(dsn, redact_url(dsn))
    return text
