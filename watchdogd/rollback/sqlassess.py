"""The assessment of a rollback's down SQL: what it would destroy now, counted in the live database.

Made at registration (the deployment's ``sql_policy``) and made again when the
rollback executes: ``database.destructive`` applies to the second, and the
rollback's report carries its counts. Counting runs in a read-only
transaction bounded by ``statement_timeout``; a count that fails is unknown,
and unknown counts as destroying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from watchdogd.rollback.sqlrisk import Risk, Target

_REFERENCING = """
WITH RECURSIVE reach(oid) AS (
    SELECT to_regclass($1)::oid
    UNION
    SELECT c.conrelid FROM pg_constraint c JOIN reach r ON c.confrelid = r.oid WHERE c.contype = 'f'
)
SELECT n.nspname, k.relname FROM reach r JOIN pg_class k ON k.oid = r.oid
JOIN pg_namespace n ON n.oid = k.relnamespace WHERE r.oid <> to_regclass($1)::oid ORDER BY 1, 2
"""
_SCHEMA_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm') ORDER BY 2
"""
_TYPE_COLUMNS = """
SELECT n.nspname, c.relname, a.attname FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'm') AND NOT a.attisdropped AND a.attnum > 0
  AND (t.oid = to_regtype($1) OR t.typelem = to_regtype($1) OR t.typbasetype = to_regtype($1))
ORDER BY 1, 2, 3
"""


@dataclass(frozen=True, slots=True)
class Finding:
    """Rows (or a column's non-null values) the down SQL would destroy or rewrite."""

    migration_id: str
    verb: str
    """drops, empties, deletes, updates, changes the type of; ``runs`` for code watchdogd cannot read."""
    table: str
    column: str | None
    rows: int | None
    """None: unknown (not counted, or code watchdogd cannot read)."""
    line: int
    note: str = ""

    @property
    def kind(self) -> str:
        return "column" if self.column else "truncate" if self.verb == "empties" else "table"

    def __str__(self) -> str:
        if self.verb == "runs":
            return f"migration {self.migration_id} line {self.line} {self.note}: rows affected unknown"
        what = f"column {self.table}.{self.column}" if self.column else f"table {self.table}"
        count = "an unknown number of" if self.rows is None else str(self.rows)
        unit = "non-null values" if self.column else "rows"
        tail = f" ({self.note})" if self.note and self.rows is None else ""
        return (
            f"migration {self.migration_id} line {self.line} {self.verb} {what} holding {count} {unit}{tail}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "line": self.line,
            "verb": self.verb,
            "table": self.table,
            "column": self.column,
            "rows": self.rows,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the rollback SQL would destroy, and what the config says to do about it."""

    findings: tuple[Finding, ...]
    policy: str
    """DatabaseConfig.destructive: auto, approve or refuse."""
    problems: tuple[str, ...] = ()
    """Why the SQL is never run (a statement refused always, a script that cannot be read)."""
    unreachable: str | None = None
    """The database could not be reached: nothing was counted (assessed again when the rollback runs)."""

    @property
    def destroys_data(self) -> bool:
        return any(f.rows is None or f.rows > 0 for f in self.findings)

    @property
    def action(self) -> str:
        """run, approve (an operator must approve first) or refuse (container-only rollback)."""
        if self.problems:
            return "refuse"
        return "run" if not self.destroys_data or self.policy == "auto" else self.policy

    @property
    def error(self) -> str | None:
        """What the deployment's registration reports: refusals, or the database out of reach."""
        unreachable = [f"database unreachable: {self.unreachable}"] if self.unreachable else []
        return "; ".join((*self.problems, *unreachable)) or None

    def summary(self) -> str:
        if self.problems:
            return "refused: " + "; ".join(self.problems)
        destroying = [str(f) for f in self.findings if f.rows is None or f.rows > 0]
        if not destroying:
            return "destroys no rows now"
        return "; ".join(destroying)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "policy": self.policy,
            "findings": [f.to_json() for f in self.findings],
        }
        if self.problems:
            out["problems"] = list(self.problems)
        if self.unreachable:
            out["unreachable"] = self.unreachable
        return out


def refused(migration_id: str, risks: Sequence[Risk]) -> list[str]:
    return [
        f"migration {migration_id} line {r.line} {r.reason}: {r.short()}"
        for r in risks
        if r.verdict == "refuse"
    ]


async def count(conn: asyncpg.Connection, migration_id: str, risks: Sequence[Risk]) -> list[Finding]:
    """The findings of ``risks`` counted now, in the caller's (read-only) transaction."""
    out: list[Finding] = []
    for risk in risks:
        if risk.verdict == "approve":
            out.append(Finding(migration_id, "runs", "", None, None, risk.line, f"{risk.reason}"))
        elif risk.verdict == "count":
            for target in risk.targets:
                out.extend(await _expand(conn, migration_id, risk.line, target))
    return out


async def _expand(conn: asyncpg.Connection, migration_id: str, line: int, target: Target) -> list[Finding]:
    if target.kind == "schema":
        rows = await conn.fetch(_SCHEMA_TABLES, target.name)
        return [
            await _count(conn, migration_id, line, Target("table", s, t, verb=target.verb), found=True)
            for s, t in rows
        ]
    if target.kind == "referencing":
        rows = await conn.fetch(_REFERENCING, target.regclass)
        return [
            await _count(conn, migration_id, line, Target("table", s, t, verb=target.verb), found=True)
            for s, t in rows
        ]
    if target.kind == "type":
        rows = await conn.fetch(_TYPE_COLUMNS, target.regclass)
        return [
            await _count(conn, migration_id, line, Target("column", s, t, c, verb=target.verb), found=True)
            for s, t, c in rows
        ]
    return [await _count(conn, migration_id, line, target)]


async def _count(
    conn: asyncpg.Connection, migration_id: str, line: int, target: Target, found: bool = False
) -> Finding:
    shown = f"{target.schema}.{target.name}" if found and target.schema else target.name
    if not found and target.schema:
        shown = f"{target.schema}.{target.name}"

    def finding(rows: int | None, note: str = "") -> Finding:
        return Finding(migration_id, target.verb, shown, target.column, rows, line, note)

    table = target.regclass
    try:
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            return finding(0, "does not exist")
        if target.column is not None:
            exists = await conn.fetchval(
                "SELECT true FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 "
                "AND NOT attisdropped",
                table,
                target.column,
            )
            if not exists:
                return finding(0, "does not exist")
            query = f"SELECT count({_quote(target.column)}) FROM {table}"
        else:
            query = f"SELECT count(*) FROM {table}"
        async with conn.transaction():
            rows = await conn.fetchval(query)
    except asyncpg.PostgresError as exc:
        return finding(None, f"not counted: SQLSTATE {exc.sqlstate}")
    return finding(int(rows))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
