"""The sql step: a migration's rollback SQL on PostgreSQL, exactly once.

For each migration (the last registered first), on one dedicated connection
(``application_name=watchdogd``) holding a session advisory lock:

    BEGIN
    SET LOCAL lock_timeout / statement_timeout
    INSERT INTO watchdogd.rollback_ledger ... ON CONFLICT DO NOTHING   -- no row: it already ran
    <the down SQL, statement by statement>
    <the app's migration table update, when configured>
    <the verify queries: each must return true>
    COMMIT

Anything failing rolls the whole transaction back. A lock timeout, a statement
timeout, a serialization failure or a deadlock is retried a bounded number of
times with backoff; any other error fails the step with its reason. When the
connection drops during COMMIT, the step reconnects, waits for the advisory
lock (held by the old session until the server has ended it, so its
transaction is settled) and reads the ledger to learn the outcome.

After the line ``-- watchdogd:no-transaction``, the script's second phase
runs after the commit, one statement at a time, each recorded in
``watchdogd.rollback_ledger_statements``: a restart skips the statements done.
Write those statements so that running one again is harmless
(``IF [NOT] EXISTS``): a crash between a statement and its record runs it
again. An INVALID index left by a failed ``CREATE INDEX CONCURRENTLY`` is
dropped before the statement runs again.

The advisory lock key is two int32s: CRC-32 of ``watchdogd:<service>`` and
CRC-32 of the database name, as signed integers, so that every watchdogd
replica rolling back the same service in the same database agrees on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from watchdogd.config.models import DatabaseConfig, MigrationsTable
from watchdogd.rollback import migrations, sqlsplit
from watchdogd.rollback.base import Migration, RollbackTarget, StepResult, StepStatus
from watchdogd.rollback.sqlsplit import Script, ScriptError, Statement

log = structlog.get_logger("watchdogd.rollback")

FaultHook = Callable[[str, asyncpg.Connection], Awaitable[None]]
"""Called at named points ("commit": just before COMMIT, "committed": just after) for fault injection."""

RETRYABLE = {
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
}
LEDGER = "watchdogd.rollback_ledger"
LEDGER_STATEMENTS = "watchdogd.rollback_ledger_statements"
# One fixed key serialises the ledger's creation between services (CREATE ... IF NOT EXISTS races).
_DDL_LOCK = (0x77646F67, 1)
LEDGER_DDL = (
    "CREATE SCHEMA IF NOT EXISTS watchdogd",
    f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
    service text NOT NULL,
    migration_id text NOT NULL,
    deployment_id text NOT NULL,
    sql_sha256 text NOT NULL,
    rolled_back_at timestamptz NOT NULL DEFAULT now(),
    phase text NOT NULL CHECK (phase IN ('no_transaction_pending', 'complete')),
    deferred_statements integer NOT NULL DEFAULT 0,
    completed_at timestamptz,
    PRIMARY KEY (service, migration_id)
)""",
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_STATEMENTS} (
    service text NOT NULL,
    migration_id text NOT NULL,
    ordinal integer NOT NULL,
    line integer NOT NULL,
    statement_sha256 text NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, migration_id, ordinal),
    FOREIGN KEY (service, migration_id) REFERENCES {LEDGER} ON DELETE CASCADE
)""",
)
LEDGER_INSERT = (
    f"INSERT INTO {LEDGER} (service, migration_id, deployment_id, sql_sha256, phase, "
    "deferred_statements, completed_at) VALUES ($1, $2, $3, $4, $5, $6, "
    "CASE WHEN $5 = 'complete' THEN now() END) ON CONFLICT (service, migration_id) DO NOTHING RETURNING 1"
)
_LOCK_HOLDER = """
SELECT a.pid, a.application_name, a.client_addr::text AS addr, a.backend_start, a.state, a.query
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::int8 = $1 AND l.objid::int8 = $2
"""
SUPERUSER = """
SELECT current_user::text, current_setting('is_superuser') = 'on'
    OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
"""
_LOCK_POLL_FIRST = 0.05
_LOCK_POLL_MAX = 1.0


class _Failed(Exception):
    """A failure with a reason fit for the operator; ``sqlstate`` when the server gave one."""

    def __init__(self, reason: str, sqlstate: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate


LOST = "connection_lost"
"""The ``sqlstate`` of a _Failed raised when the connection went away before COMMIT."""


class _CommitLost(Exception):
    """The connection went away while COMMIT was in flight: only the ledger knows the outcome."""


def advisory_key(service: str, database: str) -> tuple[int, int]:
    """The advisory lock's two int32s for ``service`` in ``database`` (see the module docstring)."""
    return _int32(zlib.crc32(f"watchdogd:{service}".encode())), _int32(zlib.crc32(database.encode()))


def _int32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def database_name(dsn: str) -> str:
    """The database a DSN names, with libpq's fallbacks (the user name, then ``postgres``)."""
    parts = urlsplit(dsn)
    name = unquote(parts.path.lstrip("/"))
    return name or unquote(parts.username or "") or "postgres"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def literal(value: object) -> str:
    """``value`` as an SQL literal, for the dry-run text."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Plan:
    """One migration ready to run: its script read and its table update built."""

    migration: Migration
    script: Script
    sql_sha256: str
    table_update: tuple[str, tuple[object, ...]] | None

    @property
    def phase(self) -> str:
        return "no_transaction_pending" if self.script.deferred else "complete"


def table_update(
    table: MigrationsTable, migration_id: str, previous: str | None
) -> tuple[str, tuple[object, ...]]:
    """The app's migration table update (see MigrationsTable) with its parameters."""
    name = f"{quote_ident(table.schema_)}.{quote_ident(table.table_name)}"
    if table.kind == "prisma":
        return (
            f"UPDATE {name} SET rolled_back_at = now() WHERE migration_name = $1 AND rolled_back_at IS NULL",
            (migration_id,),
        )
    if table.kind == "flyway":
        return f"DELETE FROM {name} WHERE version = $1", (migration_id,)
    if table.kind == "alembic":
        if previous is not None:
            return f"UPDATE {name} SET version_num = $2 WHERE version_num = $1", (migration_id, previous)
        return f"DELETE FROM {name} WHERE version_num = $1", (migration_id,)
    version = _version(migration_id, "migration id")
    if previous is not None:
        prev = _version(previous, "previous-version")
        return f"UPDATE {name} SET version = $2, dirty = false WHERE version = $1", (version, prev)
    return f"DELETE FROM {name} WHERE version = $1", (version,)


def _version(text: str, what: str) -> int:
    if not text.isdigit():
        raise ScriptError(f"golang-migrate versions are integers; {what} '{text}' is not")
    return int(text)


def plan(target: RollbackTarget, database: DatabaseConfig) -> list[Plan]:
    """Every migration's plan, in registration order; ScriptError names the migration and line."""
    plans = []
    for migration in target.migrations:
        try:
            script = sqlsplit.parse_script(migration.down_sql)
            update = (
                table_update(database.migrations_table, migration.id, script.previous_version)
                if database.migrations_table is not None
                else None
            )
        except ScriptError as exc:
            raise ScriptError(f"migration {migration.id}: {exc}") from exc
        plans.append(Plan(migration, script, sha256(migration.down_sql), update))
    return plans


def set_locals(database: DatabaseConfig, local: bool = True) -> list[str]:
    scope = "SET LOCAL" if local else "SET"
    return [
        f"{scope} lock_timeout = '{round(database.lock_timeout * 1000)}ms'",
        f"{scope} statement_timeout = '{round(database.statement_timeout * 1000)}ms'",
    ]


_QUOTING_CLASSES = ("22", "38", "39", "P0")
"""SQLSTATE classes whose messages may quote a row's value (a failed cast prints the text it was given,
a RAISE prints what it was told): data exceptions, external routines, PL/pgSQL."""


def _postgres_reason(exc: asyncpg.PostgresError) -> str:
    """The server's error for the operator: its message, unless the message may quote a row's data."""
    state = exc.sqlstate or "?"
    name = RETRYABLE.get(state) or type(exc).__name__
    if state.startswith(_QUOTING_CLASSES):
        return f"SQLSTATE {state} {name} (the server's message is not shown: it may quote data)"
    return f"SQLSTATE {state} {name}: {exc}"


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, _Failed) and exc.__cause__ is not None:
        return _connection_lost(exc.__cause__)  # a statement's failure that was the connection's
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state.startswith(("08", "57P"))
    # InternalClientError: the driver's protocol state broken by the server going away mid-call.
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError)


@dataclass(slots=True)
class _Session:
    """The dedicated connection and the advisory lock it holds."""

    conn: asyncpg.Connection
    key: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Finding:
    """Data the rollback SQL would destroy."""

    migration_id: str
    kind: str
    """table, column or truncate."""
    table: str
    column: str | None
    rows: int | None
    """Rows (table, truncate) or non-null values (column); None when it could not be counted."""
    line: int
    note: str = ""

    def __str__(self) -> str:
        what = f"column {self.table}.{self.column}" if self.column else f"table {self.table}"
        verb = "empties" if self.kind == "truncate" else "drops"
        count = "an unknown number of" if self.rows is None else str(self.rows)
        unit = "non-null values" if self.column else "rows"
        return f"migration {self.migration_id} line {self.line} {verb} {what} holding {count} {unit}"


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the rollback SQL would destroy, and what the config says to do about it."""

    findings: tuple[Finding, ...]
    policy: str
    """DatabaseConfig.destructive: auto, approve or refuse."""
    problems: tuple[str, ...] = ()

    @property
    def destroys_data(self) -> bool:
        return any(f.rows is None or f.rows > 0 for f in self.findings)

    @property
    def action(self) -> str:
        """run, approve (an operator must approve first) or refuse (container-only rollback)."""
        if self.problems:
            return "refuse"
        return "run" if not self.destroys_data or self.policy == "auto" else self.policy


@dataclass
class SqlStep:
    """The sql rollback step; ``fault`` is a hook for tests to break things at named points."""

    fault: FaultHook | None = None
    connect_timeout: float = 10.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    name: str = "sql"

    # --- the step --------------------------------------------------------------

    async def run(self, target: RollbackTarget) -> StepResult:
        database = target.config.database
        if database is None:
            return StepResult("skipped", "no database configured for this service")
        if not target.migrations:
            return StepResult("skipped", "no migration registered with this deployment")
        try:
            plans = await asyncio.to_thread(plan, target, database)
            drift = await asyncio.to_thread(migrations.drifted, target.migrations)
            session = await self._open(target.service, database)
        except (ScriptError, _Failed) as exc:
            return StepResult("failed", str(exc))
        for change in drift:  # the registered text runs: it is what was assessed and is in the ledger
            log.warning("migration_file_changed", service=target.service, change=change)
        outcomes: list[dict[str, Any]] = []
        try:
            for item in reversed(plans):
                status, detail, extra = await self._one(session, target, database, item)
                outcomes.append(
                    {"migration_id": item.migration.id, "status": status, "detail": detail, **extra}
                )
                if status == "failed":
                    break
        finally:
            await self._close(session)
        statuses = {o["status"] for o in outcomes}
        overall: StepStatus = (
            "failed" if "failed" in statuses else "already_done" if statuses == {"already_done"} else "done"
        )
        detail = "; ".join(f"{o['migration_id']}: {o['detail']}" for o in outcomes)
        data: dict[str, Any] = {"migrations": outcomes}
        if drift:
            detail += "; ran the SQL as registered, though " + "; ".join(drift)
            data["files_changed"] = drift
        return StepResult(overall, detail, data)

    async def _one(
        self, session: _Session, target: RollbackTarget, database: DatabaseConfig, item: Plan
    ) -> tuple[str, str, dict[str, Any]]:
        attempts = 0
        while True:
            attempts += 1
            try:
                inserted = await self._transaction(session, target, database, item)
                break
            except _CommitLost:
                inserted = await self._settle_lost_commit(session, target, database, item)
                if not inserted:
                    return "failed", "connection lost during COMMIT; the ledger shows it did not commit", {}
                break
            except _Failed as exc:
                retryable = exc.sqlstate in RETRYABLE or exc.sqlstate == LOST
                if retryable and attempts <= database.retries:
                    await self.sleep(database.retry_backoff * 2 ** (attempts - 1))
                    if exc.sqlstate == LOST or session.conn.is_closed():
                        await self._reconnect(session, target.service, database)
                    continue
                tries = f" after {attempts} attempts" if attempts > 1 else ""
                return "failed", f"{exc.reason}{tries}; rolled back, nothing applied", {"attempts": attempts}
        extra: dict[str, Any] = {"attempts": attempts}
        if not inserted:
            row = await session.conn.fetchrow(
                f"SELECT * FROM {LEDGER} WHERE service = $1 AND migration_id = $2",
                target.service,
                item.migration.id,
            )
            if row is None:  # only a concurrent ledger edit gets here
                return "failed", "ledger row vanished between insert and read", extra
            if row["sql_sha256"] != item.sql_sha256:
                extra["note"] = "the ledger holds a different sql_sha256 for this migration"
            if row["phase"] == "complete":
                when = row["rolled_back_at"].isoformat()
                return "already_done", f"already rolled back at {when} by {row['deployment_id']}", extra
        if item.script.deferred:
            try:
                return await self._deferred(session, target, database, item, extra)
            except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
                reason = (
                    f"connection lost in the no-transaction phase ({type(exc).__name__}); "
                    "the transactional phase is committed, a new run resumes the rest"
                )
                return "failed", reason, extra
        return "done", f"rolled back ({len(item.script.transactional)} statements)", extra

    async def _transaction(
        self, session: _Session, target: RollbackTarget, database: DatabaseConfig, item: Plan
    ) -> bool:
        """Runs the transaction; False when the ledger already holds the migration."""
        conn = session.conn
        await conn.execute("BEGIN")
        try:
            for text in set_locals(database):
                await conn.execute(text)
            inserted = await conn.fetchval(
                LEDGER_INSERT,
                target.service,
                item.migration.id,
                target.deployment_id,
                item.sql_sha256,
                item.phase,
                len(item.script.deferred),
            )
            if inserted is None:
                await conn.execute("ROLLBACK")
                return False
            await self._body(conn, item)
        except BaseException as exc:
            if _connection_lost(exc):
                how = exc.reason if isinstance(exc, _Failed) else type(exc).__name__
                raise _Failed(
                    f"connection lost before COMMIT ({how}); the server rolls the transaction back", LOST
                ) from exc
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            if isinstance(exc, asyncpg.PostgresError):
                raise _Failed(_postgres_reason(exc), exc.sqlstate) from exc
            raise
        try:
            await self._hook("commit", conn)
            await conn.execute("COMMIT")
            await self._hook("committed", conn)
        except BaseException as exc:
            if _connection_lost(exc):
                raise _CommitLost from exc
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            if isinstance(exc, asyncpg.PostgresError):
                raise _Failed(f"COMMIT failed: {_postgres_reason(exc)}", exc.sqlstate) from exc
            raise
        return True

    async def _body(self, conn: asyncpg.Connection, item: Plan) -> None:
        """The down SQL, the migration table update and the verify queries, in the open transaction."""
        for stmt in item.script.transactional:
            try:
                await conn.execute(stmt.text)
            except asyncpg.PostgresError as exc:
                raise _Failed(
                    f"line {stmt.line} failed: {_postgres_reason(exc)} ({stmt.short()})", exc.sqlstate
                ) from exc
        if item.table_update is not None:
            query, args = item.table_update
            try:
                await conn.execute(query, *args)
            except asyncpg.PostgresError as exc:
                raise _Failed(
                    f"migration table update failed: {_postgres_reason(exc)}", exc.sqlstate
                ) from exc
        for query in item.migration.verify:
            try:
                value = await conn.fetchval(query)
            except asyncpg.PostgresError as exc:
                raise _Failed(f"verify query failed: {_postgres_reason(exc)}: {query}", exc.sqlstate) from exc
            if value is not True:  # what it returned stays in the database: it may be a row's data
                raise _Failed(f"verify query was not true: {query}")

    async def _settle_lost_commit(
        self, session: _Session, target: RollbackTarget, database: DatabaseConfig, item: Plan
    ) -> bool:
        """Whether the lost COMMIT took effect, read from the ledger over a new connection."""
        session.conn.terminate()
        fresh = await self._open(target.service, database)
        session.conn = fresh.conn
        row = await session.conn.fetchrow(
            f"SELECT deployment_id, sql_sha256 FROM {LEDGER} WHERE service = $1 AND migration_id = $2",
            target.service,
            item.migration.id,
        )
        return row is not None and row["deployment_id"] == target.deployment_id

    async def _deferred(
        self,
        session: _Session,
        target: RollbackTarget,
        database: DatabaseConfig,
        item: Plan,
        extra: dict[str, Any],
    ) -> tuple[str, str, dict[str, Any]]:
        """The no-transaction phase: one statement at a time, each recorded, done ones skipped."""
        conn = session.conn
        key = (target.service, item.migration.id)
        done = {
            r["ordinal"]
            for r in await conn.fetch(
                f"SELECT ordinal FROM {LEDGER_STATEMENTS} WHERE service = $1 AND migration_id = $2", *key
            )
        }
        for text in set_locals(database, local=False):
            await conn.execute(text)
        ran = dropped = 0
        for ordinal, stmt in enumerate(item.script.deferred, 1):
            if ordinal in done:
                continue
            attempts = 0
            while True:
                attempts += 1
                try:
                    dropped += await self._drop_invalid_index(conn, stmt)
                    await conn.execute(stmt.text)
                    break
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate in RETRYABLE and attempts <= database.retries:
                        await self.sleep(database.retry_backoff * 2 ** (attempts - 1))
                        continue
                    extra.update(statements_done=len(done) + ran, invalid_indexes_dropped=dropped)
                    reason = (
                        f"no-transaction phase: line {stmt.line} failed: {_postgres_reason(exc)} "
                        f"({stmt.short()}); the transactional phase is committed, a new run resumes here"
                    )
                    return "failed", reason, extra
            await conn.execute(
                f"INSERT INTO {LEDGER_STATEMENTS} (service, migration_id, ordinal, line, statement_sha256) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                *key,
                ordinal,
                stmt.line,
                sha256(stmt.text),
            )
            ran += 1
        await conn.execute(
            f"UPDATE {LEDGER} SET phase = 'complete', completed_at = now() "
            "WHERE service = $1 AND migration_id = $2",
            *key,
        )
        await conn.execute("RESET lock_timeout; RESET statement_timeout")
        extra.update(statements_skipped=len(done), statements_run=ran, invalid_indexes_dropped=dropped)
        return "done", f"rolled back; no-transaction phase: {ran} run, {len(done)} already done", extra

    async def _drop_invalid_index(self, conn: asyncpg.Connection, stmt: Statement) -> int:
        """Drops the INVALID index a failed CREATE INDEX CONCURRENTLY left under this statement's name."""
        name = _concurrent_index_name(stmt)
        if name is None:
            return 0
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", quote_ident(name)
        )
        if valid is not False:
            return 0
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(name)}")
        return 1

    # --- rehearsal, dry-run, assessment ------------------------------------------

    async def rehearse(self, target: RollbackTarget) -> StepResult:
        """Runs the down SQL and verify queries, then rolls back; the ledger is not touched."""
        database = target.config.database
        if database is None:
            return StepResult("skipped", "no database configured for this service")
        try:
            plans = await asyncio.to_thread(plan, target, database)
            session = await self._open(target.service, database)
        except (ScriptError, _Failed) as exc:
            return StepResult("failed", str(exc))
        conn = session.conn
        try:
            for item in reversed(plans):
                await conn.execute("BEGIN")
                try:
                    for text in set_locals(database):
                        await conn.execute(text)
                    await self._body(conn, item)
                except _Failed as exc:
                    return StepResult("failed", f"rehearsal of {item.migration.id}: {exc.reason}")
                except asyncpg.PostgresError as exc:
                    return StepResult("failed", f"rehearsal of {item.migration.id}: {_postgres_reason(exc)}")
                finally:
                    if not conn.is_closed() and conn.is_in_transaction():
                        await conn.execute("ROLLBACK")
        finally:
            await self._close(session)
        skipped = sum(len(p.script.deferred) for p in plans)
        note = f"; {skipped} no-transaction statements cannot be rehearsed" if skipped else ""
        return StepResult("done", f"rehearsal succeeded and was rolled back ({len(plans)} migrations){note}")

    async def describe(self, target: RollbackTarget) -> list[str]:
        """The exact SQL ``run`` would send, in order."""
        database = target.config.database
        if database is None or not target.migrations:
            return []
        try:
            plans = await asyncio.to_thread(plan, target, database)
        except ScriptError as exc:
            return [f"-- refused: {exc}"]
        key = advisory_key(target.service, database_name(database.dsn.secret()))
        lines = [f"-- on {database.dsn} as application_name=watchdogd", *LEDGER_DDL]
        lines.append(f"SELECT pg_try_advisory_lock({key[0]}, {key[1]})")
        for item in reversed(plans):
            lines.append(f"-- migration {item.migration.id}")
            lines.append("BEGIN")
            lines.extend(set_locals(database))
            args = (
                target.service,
                item.migration.id,
                target.deployment_id,
                item.sql_sha256,
                item.phase,
                len(item.script.deferred),
            )
            lines.append(_render(LEDGER_INSERT, args))
            lines.extend(s.text for s in item.script.transactional)
            if item.table_update is not None:
                lines.append(_render(*item.table_update))
            lines.extend(item.migration.verify)
            lines.append("COMMIT")
            if item.script.deferred:
                lines.append("-- no-transaction phase, one statement at a time")
                lines.extend(set_locals(database, local=False))
                lines.extend(s.text for s in item.script.deferred)
        lines.append(f"SELECT pg_advisory_unlock({key[0]}, {key[1]})")
        return lines

    async def assess(self, target: RollbackTarget) -> Assessment:
        """Tables and columns the down SQL would drop, with the rows they hold now."""
        database = target.config.database
        if database is None:
            return Assessment((), "auto")
        try:
            plans = await asyncio.to_thread(plan, target, database)
        except ScriptError as exc:
            return Assessment((), database.destructive, (str(exc),))
        drops = await asyncio.to_thread(_drops, plans)
        if not drops:
            return Assessment((), database.destructive)
        try:
            conn = await self._connect(database)
        except _Failed as exc:
            return Assessment((), database.destructive, (str(exc),))
        findings = []
        try:
            async with conn.transaction(readonly=True):
                await conn.execute(set_locals(database)[1])
                for migration_id, drop in drops:
                    findings.append(await _count(conn, migration_id, drop))
        finally:
            await conn.close()
        return Assessment(tuple(findings), database.destructive)

    # --- connection ------------------------------------------------------------

    async def _connect(self, database: DatabaseConfig) -> asyncpg.Connection:
        dsn = database.dsn.secret()
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                dsn,
                timeout=self.connect_timeout,
                server_settings={"application_name": "watchdogd"},
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            message = str(exc)
            password = urlsplit(dsn).password
            if password:
                message = message.replace(password, "***")
            raise _Failed(f"cannot connect to {database.dsn}: {type(exc).__name__}: {message}") from exc
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

    async def _open(self, service: str, database: DatabaseConfig) -> _Session:
        """Connects, makes sure the ledger exists and takes the advisory lock."""
        conn = await self._connect(database)
        try:
            async with conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_DDL_LOCK[0]}, {_DDL_LOCK[1]})")
                for ddl in LEDGER_DDL:
                    await conn.execute(ddl)
            key = advisory_key(service, await conn.fetchval("SELECT current_database()"))
            await self._lock(conn, key, database.lock_wait)
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, asyncpg.PostgresError):
                raise _Failed(f"preparing the ledger failed: {_postgres_reason(exc)}") from exc
            raise
        return _Session(conn, key)

    async def _reconnect(self, session: _Session, service: str, database: DatabaseConfig) -> None:
        """A new connection and advisory lock for ``session`` (the server restarted, or cut it off).

        When the server is not back yet the session keeps its dead connection: the
        next attempt fails at once as lost, and the caller's retries bound the wait.
        """
        session.conn.terminate()
        try:
            fresh = await self._open(service, database)
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

    async def _close(self, session: _Session) -> None:
        conn = session.conn
        if conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *session.key)
            await conn.close(timeout=self.connect_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()  # the server releases the session lock with the session

    async def _hook(self, point: str, conn: asyncpg.Connection) -> None:
        if self.fault is not None:
            await self.fault(point, conn)


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


def _drops(plans: Sequence[Plan]) -> list[tuple[str, sqlsplit.Drop]]:
    return [
        (item.migration.id, drop)
        for item in plans
        for stmt in (*item.script.transactional, *item.script.deferred)
        for drop in sqlsplit.destructive(stmt)
    ]


def _render(query: str, args: Sequence[object]) -> str:
    """``query`` with ``$n`` replaced by literals, highest first so that $1 does not eat $10."""
    for index in range(len(args), 0, -1):
        query = query.replace(f"${index}", literal(args[index - 1]))
    return query


def _concurrent_index_name(stmt: Statement) -> str | None:
    """The index a ``CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name`` builds."""
    words = stmt.words
    i = 1 + (words[1:2] == ("unique",))
    if words[:1] != ("create",) or words[i : i + 2] != ("index", "concurrently"):
        return None
    i += 2
    if words[i : i + 3] == ("if", "not", "exists"):
        i += 3
    token = stmt.tokens[i] if i < len(stmt.tokens) else None
    if token is None or token.kind not in ("word", "ident") or token.text == "on":
        return None
    return token.text


async def _count(conn: asyncpg.Connection, migration_id: str, drop: sqlsplit.Drop) -> Finding:
    table = ".".join(quote_ident(p) for p in drop.table)
    shown = ".".join(drop.table)
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return Finding(migration_id, drop.kind, shown, drop.column, 0, drop.line, "does not exist")
    if drop.column is not None:
        exists = await conn.fetchval(
            "SELECT true FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 "
            "AND NOT attisdropped",
            table,
            drop.column,
        )
        if not exists:
            return Finding(migration_id, drop.kind, shown, drop.column, 0, drop.line, "does not exist")
        query = f"SELECT count({quote_ident(drop.column)}) FROM {table}"
    else:
        query = f"SELECT count(*) FROM {table}"
    try:
        async with conn.transaction():
            rows = await conn.fetchval(query)
    except asyncpg.PostgresError as exc:
        return Finding(migration_id, drop.kind, shown, drop.column, None, drop.line, _postgres_reason(exc))
    return Finding(migration_id, drop.kind, shown, drop.column, int(rows), drop.line)
