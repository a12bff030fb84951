"""The sql step's plan: each migration's down SQL read, its table update built, its risks known.

Pure, no connection: the script split into its transactional and
no-transaction phases, the session's time bounds, what a rehearsal cannot undo
(sequences), the index a ``CREATE INDEX CONCURRENTLY`` builds, and the SQL
literals of the dry-run text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from watchdogd.config.models import DatabaseConfig
from watchdogd.rollback import sqlclass, sqlrisk, sqlsplit
from watchdogd.rollback.base import Migration, RollbackTarget
from watchdogd.rollback.sqlrisk import Risk
from watchdogd.rollback.sqlsplit import Script, ScriptError, Statement
from watchdogd.rollback.sqltables import TableUpdate, table_updates


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


def _leaks(plans: Sequence[Plan]) -> str:
    """The statements whose effect a rehearsal's rollback would not undo (sequences), or ''."""
    found = [
        f"migration {p.migration.id} line {r.line} calls {', '.join(r.sequences)}"
        for p in plans
        for r in p.risks
        if r.sequences
    ]
    return "; ".join(found) + ": a sequence change survives the rehearsal's rollback" if found else ""


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
