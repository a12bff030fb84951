"""What the sql step's role lacks to run, each with the statement that would fix it (``check --live``).

Read from the live database as the role the service's DSN connects as:

- the ledger: the ``watchdogd`` schema (or CREATE on the database to make it),
  USAGE on it, CREATE on it for the tables not made yet, and on the tables
  that exist the privileges the step uses;
- the app's migration table (``database.migrations_table``): the privileges its
  update needs (Sqitch: on each registry table);
- the tables the down SQL touches, read from the migrations directory when it
  is configured (the latest ``LATEST`` migrations): ownership of what it
  drops or alters, DELETE, UPDATE, TRUNCATE or INSERT on what it writes.
  Objects that do not exist now are not judged: a down script drops what its
  migration will have created.

Pure parsing is pglast's (PostgreSQL's grammar); the privilege checks are the
server's own (``has_*_privilege``, ``pg_has_role``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from watchdogd.config.models import DatabaseConfig, MigrationsDir, MigrationsTable
from watchdogd.rollback import sqlclass
from watchdogd.rollback.sqlledger import LEDGER, LEDGER_HISTORY, LEDGER_STATEMENTS
from watchdogd.rollback.sqltables import qualified, quote_ident

LATEST = 20
"""Down scripts read from the migrations directory, the last by name: the ones a rollback may run."""

LEDGER_NEEDS = {
    LEDGER: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    LEDGER_STATEMENTS: ("SELECT", "INSERT"),
    LEDGER_HISTORY: ("INSERT",),
}
TABLE_NEEDS = {
    "prisma": ("SELECT", "UPDATE"),
    "alembic": ("SELECT", "UPDATE"),
    "golang-migrate": ("SELECT", "UPDATE"),
    "flyway": ("SELECT", "DELETE"),
    "liquibase": ("SELECT", "DELETE"),
    "atlas": ("SELECT", "DELETE"),
}
SQITCH_NEEDS = {
    "changes": ("SELECT", "DELETE"),
    "tags": ("SELECT", "DELETE"),
    "dependencies": ("SELECT", "DELETE"),
    "events": ("INSERT",),
}


@dataclass(frozen=True, slots=True)
class Need:
    """A privilege the down SQL needs on one object: ``owner`` or a table privilege."""

    kind: str
    """relation, schema or type."""
    schema: str | None
    name: str
    privilege: str
    line: int
    source: str

    @property
    def qualified(self) -> str:
        name = quote_ident(self.name)
        return f"{quote_ident(self.schema)}.{name}" if self.schema else name


async def missing(conn: asyncpg.Connection, database: DatabaseConfig) -> list[str]:
    """One line per missing privilege, each with the GRANT (or ALTER ... OWNER) that fixes it."""
    role = str(await conn.fetchval("SELECT current_user"))
    out = await _ledger(conn, role)
    if database.migrations_table is not None:
        out += await _migration_table(conn, role, database.migrations_table)
    if database.migrations is not None:
        seen: set[tuple[str, str | None, str, str]] = set()
        for need in needs_of_dir(database.migrations):
            key = (need.kind, need.schema, need.name, need.privilege)
            if key in seen:
                continue
            seen.add(key)
            problem = await _check(conn, role, need)
            if problem:
                out.append(problem)
    return out


async def _ledger(conn: asyncpg.Connection, role: str) -> list[str]:
    who = quote_ident(role)
    if await conn.fetchval("SELECT to_regnamespace('watchdogd')") is None:
        if await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')"):
            return []
        name = await conn.fetchval("SELECT current_database()")
        return [
            f"missing CREATE on database {name} (the ledger's schema watchdogd does not exist): "
            f"as its owner, CREATE SCHEMA watchdogd; GRANT USAGE, CREATE ON SCHEMA watchdogd TO {who};"
        ]
    if not await conn.fetchval("SELECT has_schema_privilege('watchdogd', 'USAGE')"):
        return [f"missing USAGE on schema watchdogd: GRANT USAGE ON SCHEMA watchdogd TO {who};"]
    out = []
    absent = []
    for table, privileges in LEDGER_NEEDS.items():
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            absent.append(table)
        else:
            out += await _table_privileges(conn, who, table, privileges, "the ledger")
    if absent and not await conn.fetchval("SELECT has_schema_privilege('watchdogd', 'CREATE')"):
        out.append(
            f"missing CREATE on schema watchdogd ({', '.join(absent)} not created yet): "
            f"GRANT CREATE ON SCHEMA watchdogd TO {who};"
        )
    return out


async def _migration_table(conn: asyncpg.Connection, role: str, table: MigrationsTable) -> list[str]:
    who = quote_ident(role)
    schema = table.schema_name
    if await conn.fetchval("SELECT to_regnamespace($1)", quote_ident(schema)) is None:
        return [f"migrations_table: schema {schema} does not exist (kind {table.kind})"]
    if not await conn.fetchval("SELECT has_schema_privilege($1, 'USAGE')", schema):
        return [
            f"missing USAGE on schema {quote_ident(schema)}: "
            f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {who};"
        ]
    wanted = (
        {qualified(table, name): p for name, p in SQITCH_NEEDS.items()}
        if table.kind == "sqitch"
        else {qualified(table): TABLE_NEEDS.get(table.kind, ("SELECT", "UPDATE"))}
    )
    if table.kind == "liquibase":  # its lock row is held FOR UPDATE in the rollback's transaction
        wanted[qualified(table, table.table_name + "lock")] = ("SELECT", "UPDATE")
    out = []
    for name, privileges in wanted.items():
        if await conn.fetchval("SELECT to_regclass($1)", name) is None:
            out.append(f"migrations_table: {name} does not exist (kind {table.kind})")
            continue
        out += await _table_privileges(conn, who, name, privileges, "the migration table")
    return out


async def _table_privileges(
    conn: asyncpg.Connection, who: str, table: str, privileges: tuple[str, ...], why: str
) -> list[str]:
    lacking = [
        p for p in privileges if not await conn.fetchval("SELECT has_table_privilege($1, $2)", table, p)
    ]
    if not lacking:
        return []
    what = ", ".join(lacking)
    return [f"missing {what} on {table} ({why}): GRANT {what} ON {table} TO {who};"]


async def _check(conn: asyncpg.Connection, role: str, need: Need) -> str | None:
    who = quote_ident(role)
    where = f"{need.source} line {need.line}"
    schema_there = need.schema is not None and await conn.fetchval(
        "SELECT to_regnamespace($1)", quote_ident(need.schema)
    )
    if schema_there and not await conn.fetchval("SELECT has_schema_privilege($1, 'USAGE')", need.schema):
        return (
            f"missing USAGE on schema {quote_ident(need.schema or '')} ({where}): "
            f"GRANT USAGE ON SCHEMA {quote_ident(need.schema or '')} TO {who};"
        )
    if need.kind == "schema":
        row = await conn.fetchrow(
            "SELECT pg_has_role(nspowner, 'USAGE') AS owns, pg_get_userbyid(nspowner) AS owner "
            "FROM pg_namespace WHERE nspname = $1",
            need.name,
        )
        fix = f"ALTER SCHEMA {quote_ident(need.name)} OWNER TO {who};"
    elif need.kind == "type":
        row = await conn.fetchrow(
            "SELECT pg_has_role(typowner, 'USAGE') AS owns, pg_get_userbyid(typowner) AS owner "
            "FROM pg_type WHERE oid = to_regtype($1)",
            need.qualified,
        )
        fix = f"ALTER TYPE {need.qualified} OWNER TO {who};"
    else:
        row = await conn.fetchrow(
            "SELECT pg_has_role(relowner, 'USAGE') AS owns, pg_get_userbyid(relowner) AS owner, "
            "relkind FROM pg_class WHERE oid = to_regclass($1)",
            need.qualified,
        )
        fix = f"ALTER TABLE {need.qualified} OWNER TO {who};"
    if row is None:
        return None  # not there now: the migration creates it
    if need.privilege == "owner":
        if row["owns"]:
            return None
        return (
            f"not the owner of {need.kind} {need.qualified} (owned by {row['owner']}; {where} drops or "
            f"alters it): {fix} (or GRANT {quote_ident(row['owner'])} TO {who};)"
        )
    if await conn.fetchval("SELECT has_table_privilege(to_regclass($1), $2)", need.qualified, need.privilege):
        return None
    return (
        f"missing {need.privilege} on {need.qualified} ({where}): "
        f"GRANT {need.privilege} ON {need.qualified} TO {who};"
    )


def needs_of_dir(source: MigrationsDir) -> list[Need]:
    """What the latest down scripts of ``source`` need; a script PostgreSQL would not parse is skipped
    (registration reports it)."""
    out: list[Need] = []
    for path in _down_scripts(source):
        try:
            out += needs(path.read_text(encoding="utf-8"), str(path.relative_to(source.dir)))
        except (OSError, UnicodeDecodeError, sqlclass.SqlSyntaxError):
            continue
    return out


def _down_scripts(source: MigrationsDir) -> list[Path]:
    root = source.dir
    pattern = {
        "plain": "*/down.sql",
        "prisma": "*/down.sql",
        "alembic": "*.down.sql",
        "golang-migrate": "*_*.down.sql",
        "flyway": "U*__*.sql",
    }.get(source.layout, "*/down.sql")
    try:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
    except OSError:
        return []
    return found[-LATEST:]


def needs(sql: str, source: str = "down SQL") -> list[Need]:
    """Every privilege ``sql`` needs, statement by statement; SqlSyntaxError when it does not parse."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        raise sqlclass.SqlSyntaxError(str(exc.args[0])) from None
    out = []
    for raw in raws:
        start = raw.stmt_location or 0
        chunk = sql[start : start + raw.stmt_len if raw.stmt_len else len(sql)]
        line = sql.count("\n", 0, start + len(chunk) - len(chunk.lstrip())) + 1
        for kind, parts, privilege in _needs(raw.stmt):
            if parts:
                schema = parts[-2] if len(parts) >= 2 else None
                out.append(Need(kind, schema, parts[-1], privilege, line, source))
    return out


def _needs(node: Any) -> Iterator[tuple[str, list[str], str]]:
    from pglast.enums import ObjectType

    name = type(node).__name__
    if name == "DropStmt":
        relations = (
            ObjectType.OBJECT_TABLE,
            ObjectType.OBJECT_VIEW,
            ObjectType.OBJECT_MATVIEW,
            ObjectType.OBJECT_INDEX,
            ObjectType.OBJECT_SEQUENCE,
            ObjectType.OBJECT_FOREIGN_TABLE,
        )
        for obj in node.objects or ():
            parts = sqlclass._strings(obj if isinstance(obj, tuple | list) else getattr(obj, "names", (obj,)))
            if node.removeType in relations:
                yield "relation", parts, "owner"
            elif node.removeType == ObjectType.OBJECT_SCHEMA:
                yield "schema", parts[-1:], "owner"
            elif node.removeType in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_DOMAIN):
                yield "type", parts, "owner"
    elif (
        name in ("AlterTableStmt", "IndexStmt", "RenameStmt", "CreateTrigStmt") and node.relation is not None
    ):
        yield "relation", _parts(node.relation), "owner"
    elif name == "TruncateStmt":
        for rel in node.relations or ():
            yield "relation", _parts(rel), "TRUNCATE"
    elif name == "InsertStmt" and node.relation is not None:
        yield "relation", _parts(node.relation), "INSERT"
    for item in sqlclass._walk(node):
        kind = type(item).__name__
        if kind in ("DeleteStmt", "UpdateStmt") and item.relation is not None:
            yield "relation", _parts(item.relation), "DELETE" if kind == "DeleteStmt" else "UPDATE"


def _parts(rel: Any) -> list[str]:
    return [p for p in (rel.schemaname, rel.relname) if p]
