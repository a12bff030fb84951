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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from watchdogd.config.models import DatabaseConfig
from watchdogd.rollback import migrations, sqlassess, sqlclass, sqlledger, sqlrisk, sqlsplit
from watchdogd.rollback.base import Migration, RollbackTarget, StepResult, StepStatus
from watchdogd.rollback.sqlassess import Assessment, Finding
from watchdogd.rollback.sqlledger import INSERT as LEDGER_INSERT
from watchdogd.rollback.sqlledger import LEDGER, LEDGER_DDL, LEDGER_STATEMENTS, advisory_key
from watchdogd.rollback.sqlrisk import Risk
from watchdogd.rollback.sqlsplit import Script, ScriptError, Statement
from watchdogd.rollback.sqltables import MIGRATOR_LOCKS, TableUpdate, quote_ident, rows_touched, table_updates

log = structlog.get_logger("watchdogd.rollback")

FaultHook = Callable[[str, asyncpg.Connection], Awaitable[None]]
"""Called at named points ("commit": just before COMMIT, "committed": just after) for fault injection."""

RETRYABLE = {
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
}
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
REHEARSAL_LOCK_TIMEOUT = 0.2
"""A rehearsal's lock_timeout (at most the configured one): it never blocks the app's queries longer."""
KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}
"""The server notices a vanished watchdogd within about a minute and rolls its transaction back."""
SUPERUSER = """
SELECT current_user::text, current_setting('is_superuser') = 'on'
    OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
"""
_LOCK_POLL_FIRST = 0.05
_LOCK_POLL_MAX = 1.0


class _Failed(Exception):
    """A failure with a reason fit for the operator; ``sqlstate`` when the server gave one."""

    def __init__(self, reason: str, sqlstate: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate
        self.retryable = sqlstate in RETRYABLE if retryable is None else retryable


LOST = "connection_lost"
"""The ``sqlstate`` of a _Failed raised when the connection went away before COMMIT."""


class _CommitLost(Exception):
    """The connection went away while COMMIT was in flight: only the ledger knows the outcome."""


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


@dataclass(frozen=True, slots=True)
class Plan:
    """One migration ready to run: its script read and its table update built."""

    migration: Migration
    script: Script
    sql_sha256: str
    table_updates: tuple[TableUpdate, ...]
    risks: tuple[Risk, ...] = ()
    """Each statement's verdict, read by PostgreSQL's parser (sqlrisk)."""

    @property
    def phase(self) -> str:
        return "no_transaction_pending" if self.script.deferred else "complete"


def plan(target: RollbackTarget, database: DatabaseConfig) -> list[Plan]:
    """Every migration's plan, in registration order; ScriptError names the migration and line."""
    plans = []
    for migration in target.migrations:
        try:
            script = sqlsplit.parse_script(migration.down_sql)
            updates = (
                table_updates(database.migrations_table, migration.id, script)
                if database.migrations_table is not None
                else ()
            )
            found = tuple(sqlrisk.risks(migration.down_sql))
        except sqlclass.SqlSyntaxError as exc:
            raise ScriptError(f"migration {migration.id}: PostgreSQL would not parse it: {exc}") from exc
        except ScriptError as exc:
            if str(exc).startswith(f"migration {migration.id}:"):
                raise
            raise ScriptError(f"migration {migration.id}: {exc}") from exc
        plans.append(Plan(migration, script, sha256(migration.down_sql), updates, found))
    return plans


def set_locals(database: DatabaseConfig, local: bool = True, lock_timeout: float | None = None) -> list[str]:
    """The transaction's (``local``) or the session's time bounds."""
    scope = "SET LOCAL" if local else "SET"
    lock = database.lock_timeout if lock_timeout is None else lock_timeout
    idle = max(database.lock_timeout, database.statement_timeout) + 30.0
    return [
        f"{scope} lock_timeout = '{round(lock * 1000)}ms'",
        f"{scope} statement_timeout = '{round(database.statement_timeout * 1000)}ms'",
        f"{scope} idle_in_transaction_session_timeout = '{round(idle * 1000)}ms'",
    ]


def _retryable(exc: asyncpg.PostgresError) -> bool:
    """A lock or statement timeout, a serialization failure, a deadlock: not a cancel by someone else."""
    state = exc.sqlstate or ""
    if state == "57014":
        return "statement timeout" in str(exc)
    return state in RETRYABLE


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
        try:
            assessment = await self._assess(session.conn, database, plans)
        except BaseException:
            await self._close(session)
            raise
        counts = assessment.to_json()
        if assessment.action == "refuse":
            await self._close(session)
            why = (
                assessment.summary()
                if assessment.problems
                else f"database.destructive is refuse and it {assessment.summary()}"
            )
            return StepResult("skipped", f"down SQL not run: {why}", {"assessment": counts})
        if assessment.action == "approve" and target.approved_by is None:
            await self._close(session)
            return StepResult(
                "failed",
                f"needs an operator's approval: assessed when the rollback ran, it {assessment.summary()}; "
                "retry the rollback to approve it (database.destructive: approve)",
                {"assessment": counts},
            )
        if database.rehearse_first:
            try:
                stop = await self._rehearse_first(session, target, database, plans)
            except BaseException:
                await self._close(session)
                raise
            if stop is not None:
                await self._close(session)
                return StepResult("failed", stop, {"assessment": counts, "rehearsed": False})
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
        if assessment.findings:
            approved = f" (approved by {target.approved_by})" if target.approved_by else ""
            detail += f"; assessed at execution{approved}: it {assessment.summary()}"
        data: dict[str, Any] = {"migrations": outcomes, "assessment": counts}
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
                retryable = exc.retryable or exc.sqlstate == LOST
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
            await conn.execute(sqlledger.ARCHIVE, target.service, item.migration.id, target.deployment_id)
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
                raise _Failed(_postgres_reason(exc), exc.sqlstate, _retryable(exc)) from exc
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
                raise _Failed(
                    f"COMMIT failed: {_postgres_reason(exc)}", exc.sqlstate, _retryable(exc)
                ) from exc
            raise
        return True

    async def _body(self, conn: asyncpg.Connection, item: Plan) -> None:
        """The down SQL, the migration table update and the verify queries, in the open transaction."""
        for stmt in item.script.transactional:
            try:
                await conn.execute(stmt.text)
            except asyncpg.PostgresError as exc:
                raise _Failed(
                    f"line {stmt.line} failed: {_postgres_reason(exc)} ({stmt.short()})",
                    exc.sqlstate,
                    _retryable(exc),
                ) from exc
        for update in item.table_updates:
            if update.guard:
                try:
                    busy = await conn.fetchval(update.query, *update.args)
                except asyncpg.PostgresError as exc:
                    raise _Failed(
                        f"migration table lock: {_postgres_reason(exc)}", exc.sqlstate, _retryable(exc)
                    ) from exc
                if busy is not None:
                    raise _Failed(str(busy), "55P03", True)  # waited for like any lock
                continue
            try:
                touched = rows_touched(await conn.execute(update.query, *update.args))
            except asyncpg.PostgresError as exc:
                raise _Failed(
                    f"migration table update failed: {_postgres_reason(exc)}", exc.sqlstate, _retryable(exc)
                ) from exc
            wrong = update.mismatch(touched, item.migration.id)
            if wrong is not None:
                raise _Failed(wrong)
        for query in item.migration.verify:
            try:
                value = await conn.fetchval(query)
            except asyncpg.PostgresError as exc:
                raise _Failed(
                    f"verify query failed: {_postgres_reason(exc)}: {query}", exc.sqlstate, _retryable(exc)
                ) from exc
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
                    if _retryable(exc) and attempts <= database.retries:
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
        except ScriptError as exc:
            return StepResult("failed", str(exc))
        leaks = _leaks(plans)
        if leaks:
            return StepResult("failed", f"not rehearsed: {leaks}")
        try:
            session = await self._open(target.service, database)
        except _Failed as exc:
            return StepResult("failed", str(exc))
        try:
            await self._rehearse_on(session.conn, database, plans, REHEARSAL_LOCK_TIMEOUT)
        except _Failed as exc:
            return StepResult("failed", exc.reason)
        finally:
            await self._close(session)
        skipped = sum(len(p.script.deferred) for p in plans)
        note = f"; {skipped} no-transaction statements cannot be rehearsed" if skipped else ""
        return StepResult("done", f"rehearsal succeeded and was rolled back ({len(plans)} migrations){note}")

    async def _rehearse_on(
        self, conn: asyncpg.Connection, database: DatabaseConfig, plans: Sequence[Plan], lock_timeout: float
    ) -> None:
        """Every plan's transactional phase in one transaction, deferred constraints checked, rolled back.

        ``lock_timeout`` is at most the configured one. Raises _Failed naming the migration.
        """
        await conn.execute("BEGIN")
        try:
            for text in set_locals(database, lock_timeout=min(database.lock_timeout, lock_timeout)):
                await conn.execute(text)
            for item in reversed(plans):
                try:
                    await self._body(conn, item)
                    await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks run now
                except _Failed as exc:
                    raise _Failed(
                        f"rehearsal of {item.migration.id}: {exc.reason}", exc.sqlstate, exc.retryable
                    ) from exc
                except asyncpg.PostgresError as exc:
                    raise _Failed(
                        f"rehearsal of {item.migration.id}: {_postgres_reason(exc)}",
                        exc.sqlstate,
                        _retryable(exc),
                    ) from exc
        finally:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")

    async def _rehearse_first(
        self, session: _Session, target: RollbackTarget, database: DatabaseConfig, plans: Sequence[Plan]
    ) -> str | None:
        """``database.rehearse_first``: the rehearsal on the run's own session; the reason to stop, or None.

        Migrations the ledger shows done (or half done, to be resumed) are not rehearsed: the real run
        does not run their transactional phase again either. Lock and statement timeouts are retried as
        the real run retries them, with the configured lock_timeout: the real run takes those locks next.
        """
        rows = await session.conn.fetch(
            f"SELECT migration_id, deployment_id, phase FROM {LEDGER} WHERE service = $1", target.service
        )
        ledger = {r["migration_id"]: r for r in rows}
        todo = [
            p
            for p in plans
            if (row := ledger.get(p.migration.id)) is None
            or (row["phase"] == "complete" and row["deployment_id"] != target.deployment_id)
        ]
        if not todo:
            return None
        leaks = _leaks(todo)
        if leaks:
            return f"database.rehearse_first: not rehearsed, so not run: {leaks}"
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._rehearse_on(session.conn, database, todo, database.lock_timeout)
                return None
            except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
                return f"database.rehearse_first: connection lost during the rehearsal ({type(exc).__name__})"
            except _Failed as exc:
                if exc.retryable and attempts <= database.retries:
                    await self.sleep(database.retry_backoff * 2 ** (attempts - 1))
                    continue
                tries = f" after {attempts} attempts" if attempts > 1 else ""
                return (
                    f"database.rehearse_first: the rehearsal failed{tries}, so the rollback SQL was not run: "
                    f"{exc.reason}"
                )

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
            lines.extend(_render(u.query, u.args) for u in item.table_updates)
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
        refused = [r for p in plans for r in sqlassess.refused(p.migration.id, p.risks)]
        if refused:
            return Assessment((), database.destructive, tuple(refused))
        if not any(r.verdict in ("count", "approve") for p in plans for r in p.risks):
            return Assessment((), database.destructive)
        try:
            conn = await self._connect(database)
        except _Failed as exc:
            if exc.sqlstate != LOST:
                return Assessment((), database.destructive, (str(exc),))
            return Assessment(
                (), database.destructive, unreachable=f"{exc.reason}; assessed again when the rollback runs"
            )
        try:
            return await self._assess(conn, database, plans)
        finally:
            await conn.close()

    async def _assess(
        self, conn: asyncpg.Connection, database: DatabaseConfig, plans: Sequence[Plan]
    ) -> Assessment:
        """The assessment counted now on ``conn``, in a read-only transaction."""
        refused = [r for p in plans for r in sqlassess.refused(p.migration.id, p.risks)]
        if refused:
            return Assessment((), database.destructive, tuple(refused))
        findings: list[Finding] = []
        async with conn.transaction(readonly=True):
            for text in set_locals(database):  # a table locked by the app is "not counted", not waited on
                await conn.execute(text)
            for item in plans:
                findings.extend(await sqlassess.count(conn, item.migration.id, item.risks))
        return Assessment(tuple(findings), database.destructive)

    # --- connection ------------------------------------------------------------

    async def _connect(self, database: DatabaseConfig) -> asyncpg.Connection:
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

    async def _open(self, service: str, database: DatabaseConfig) -> _Session:
        """Connects, makes sure the ledger exists and takes the advisory lock."""
        conn = await self._connect(database)
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

    async def _close(self, session: _Session) -> None:
        conn = session.conn
        if conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
            await conn.close(timeout=self.connect_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()  # the server releases the session lock with the session

    async def _hook(self, point: str, conn: asyncpg.Connection) -> None:
        if self.fault is not None:
            await self.fault(point, conn)


def _leaks(plans: Sequence[Plan]) -> str:
    """The statements whose effect a rehearsal's rollback would not undo (sequences), or ''."""
    found = [
        f"migration {p.migration.id} line {r.line} calls {', '.join(r.sequences)}"
        for p in plans
        for r in p.risks
        if r.sequences
    ]
    return "; ".join(found) + ": a sequence change survives the rehearsal's rollback" if found else ""


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
