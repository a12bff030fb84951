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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from watchdogd.config.models import DatabaseConfig
from watchdogd.rollback import migrations, sqlassess, sqlledger
from watchdogd.rollback.base import RollbackTarget, StepResult, StepStatus
from watchdogd.rollback.sqlassess import Assessment, Finding
from watchdogd.rollback.sqlerrors import _QUOTING_CLASSES as _QUOTING_CLASSES
from watchdogd.rollback.sqlerrors import (
    LOST,
    RETRYABLE,
    _CommitLost,
    _connection_lost,
    _Failed,
    _postgres_reason,
    _retryable,
)
from watchdogd.rollback.sqlledger import INSERT as LEDGER_INSERT
from watchdogd.rollback.sqlledger import LEDGER, LEDGER_DDL, LEDGER_STATEMENTS, advisory_key
from watchdogd.rollback.sqlplan import (
    Plan,
    _concurrent_index_name,
    _leaks,
    _render,
    database_name,
    literal,
    plan,
    set_locals,
    sha256,
)
from watchdogd.rollback.sqlsession import _LOCK_HOLDER as _LOCK_HOLDER
from watchdogd.rollback.sqlsession import _LOCK_POLL_FIRST as _LOCK_POLL_FIRST
from watchdogd.rollback.sqlsession import _LOCK_POLL_MAX as _LOCK_POLL_MAX
from watchdogd.rollback.sqlsession import _MIGRATOR_HOLDER as _MIGRATOR_HOLDER
from watchdogd.rollback.sqlsession import KEEPALIVES, SUPERUSER, Sessions, _Session
from watchdogd.rollback.sqlsession import _holders as _holders
from watchdogd.rollback.sqlsplit import ScriptError, Statement
from watchdogd.rollback.sqltables import quote_ident, rows_touched

# every name this module held before its plan, errors and session moved out stays importable here
# (the private ones imported ``as`` themselves)
__all__ = [
    "KEEPALIVES",
    "LOST",
    "REHEARSAL_LOCK_TIMEOUT",
    "RETRYABLE",
    "SUPERUSER",
    "FaultHook",
    "Plan",
    "SqlStep",
    "advisory_key",
    "database_name",
    "literal",
    "plan",
    "set_locals",
    "sha256",
]

log = structlog.get_logger("watchdogd.rollback")

FaultHook = Callable[[str, asyncpg.Connection], Awaitable[None]]
"""Called at named points ("commit": just before COMMIT, "committed": just after) for fault injection."""

REHEARSAL_LOCK_TIMEOUT = 0.2
"""A rehearsal's lock_timeout (at most the configured one): it never blocks the app's queries longer."""


@dataclass
class SqlStep:
    """The sql rollback step; ``fault`` is a hook for tests to break things at named points."""

    fault: FaultHook | None = None
    connect_timeout: float = 10.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    name: str = "sql"
    sessions: Sessions = field(init=False, repr=False, compare=False)
    """The connection and its locks, opened with this step's ``connect_timeout`` and ``sleep``."""

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.connect_timeout, self.sleep)

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
            session = await self.sessions.open(target.service, database)
        except (ScriptError, _Failed) as exc:
            return StepResult("failed", str(exc))
        for change in drift:  # the registered text runs: it is what was assessed and is in the ledger
            log.warning("migration_file_changed", service=target.service, change=change)
        try:
            assessment = await self._assess(session.conn, database, plans)
        except BaseException:
            await self.sessions.close(session)
            raise
        counts = assessment.to_json()
        if assessment.action == "refuse":
            await self.sessions.close(session)
            why = (
                assessment.summary()
                if assessment.problems
                else f"database.destructive is refuse and it {assessment.summary()}"
            )
            return StepResult("skipped", f"down SQL not run: {why}", {"assessment": counts})
        if assessment.action == "approve" and target.approved_by is None:
            await self.sessions.close(session)
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
                await self.sessions.close(session)
                raise
            if stop is not None:
                await self.sessions.close(session)
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
            await self.sessions.close(session)
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
                        await self.sessions.reconnect(session, target.service, database)
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
        fresh = await self.sessions.open(target.service, database)
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
            session = await self.sessions.open(target.service, database)
        except _Failed as exc:
            return StepResult("failed", str(exc))
        try:
            await self._rehearse_on(session.conn, database, plans, REHEARSAL_LOCK_TIMEOUT)
        except _Failed as exc:
            return StepResult("failed", exc.reason)
        finally:
            await self.sessions.close(session)
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
            conn = await self.sessions.connect(database)
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

    async def _hook(self, point: str, conn: asyncpg.Connection) -> None:
        if self.fault is not None:
            await self.fault(point, conn)
