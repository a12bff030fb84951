"""The migrations a deployment names, made into what the sql step runs.

A pipeline names its migrations by id; their down SQL and verify queries
are read from the service's ``database.migrations`` directory (the operators'
own files, as Flyway and Sqitch take scripts from the project), each file's
SHA-256 kept with the deployment. The text is kept too: a rollback after a
restart runs what was registered; a file changed on disk since is reported
(``drifted``), not run.

SQL inside the request is taken only when the service sets
``database.sql_from_api``, and then only what ``sqlclass.refusals`` lets
through. Reading and parsing run in a worker thread (``resolve``): a large
script must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdogd.config.models import DatabaseConfig, MigrationsDir
from watchdogd.errors import Invalid
from watchdogd.model import Migration
from watchdogd.rollback import sqlsplit
from watchdogd.rollback.sqlsplit import ScriptError

MAX_FILE = 10 << 20
"""The largest migration file read: beyond it something else is in the directory."""
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    """A migration as a request names it: its id, and SQL only when the service takes SQL from the API."""

    id: str
    down_sql: str | None = None
    verify_sql: tuple[str, ...] | None = None

    @property
    def inline(self) -> bool:
        return self.down_sql is not None or self.verify_sql is not None


def files_for(source: MigrationsDir, migration_id: str) -> tuple[Path, Path | None]:
    """The down script of ``migration_id`` in ``source`` and its verify file (None: there is none).

    Invalid (``unknown_migration``) names the directory when there is no such migration.
    """
    root = source.dir
    if not _ID.fullmatch(migration_id) or ".." in migration_id:
        raise _unknown(migration_id, root, "not a migration id (letters, digits, '.', '_', '-')")
    layout = source.layout
    if layout in ("plain", "prisma"):
        folder = root / migration_id
        down, verify = folder / "down.sql", folder / "verify.sql"
        if not down.is_file():
            return _missing(migration_id, root, f"{migration_id}/down.sql")
    elif layout == "alembic":
        down, verify = root / f"{migration_id}.down.sql", root / f"{migration_id}.verify.sql"
        if not down.is_file():
            return _missing(migration_id, root, f"{migration_id}.down.sql")
    else:
        pattern = f"U{migration_id}__*.sql" if layout == "flyway" else f"{migration_id}_*.down.sql"
        found = sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.endswith(".verify.sql"))
        if not found:
            return _missing(migration_id, root, pattern)
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise _unknown(migration_id, root, f"more than one down script matches {pattern}: {names}")
        down = found[0]
        stem = down.name.removesuffix(".down.sql" if layout == "golang-migrate" else ".sql")
        verify = root / f"{stem}.verify.sql"
    if not _inside(down, root):
        raise _unknown(migration_id, root, "its file lies outside the directory")
    return down, verify if verify.is_file() and _inside(verify, root) else None


def read_migration(source: MigrationsDir, migration_id: str) -> Migration:
    """The migration's down SQL and verify queries as the files hold them now, with their SHA-256."""
    down, verify = files_for(source, migration_id)
    down_sql, down_sha = _read(down, migration_id)
    files = [(str(down), down_sha)]
    queries: tuple[str, ...] = ()
    if verify is not None:
        text, sha = _read(verify, migration_id)
        files.append((str(verify), sha))
        try:
            queries = tuple(s.text for s in sqlsplit.split(text)[0])
        except ScriptError as exc:
            raise Invalid(f"migration {migration_id}: {verify}: {exc}", "invalid_migration") from None
    return Migration(migration_id, down_sql, queries, source="file", files=tuple(files))


def inline_migration(database: DatabaseConfig, request: MigrationRequest) -> Migration:
    """SQL sent in the request: refused unless the service takes it, then only its own schema changes."""
    from watchdogd.rollback import sqlclass

    if not database.sql_from_api:
        raise Invalid(
            f"migration {request.id}: this service reads its rollback SQL from its migrations directory; "
            "send the migration's id only (down_sql and verify_sql need database.sql_from_api: true)",
            "sql_from_api_disabled",
        )
    down_sql = request.down_sql or ""
    if not down_sql.strip():
        raise Invalid(f"migration {request.id}: down_sql is empty", "sql_refused")
    try:
        problems = sqlclass.refusals(sqlclass.classify(down_sql), database.schemas)
        sqlsplit.parse_script(down_sql)  # the phases and directives the step will read
    except (sqlclass.SqlSyntaxError, ScriptError) as exc:
        raise Invalid(f"migration {request.id}: down_sql: {exc}", "sql_refused") from None
    verify = request.verify_sql or ()
    for index, query in enumerate(verify):
        problems += [f"verify_sql[{index}]: {p}" for p in sqlclass.verify_refusals(query)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise Invalid(
            f"migration {request.id}: SQL from a request may only change the service's schemas "
            f"({', '.join(database.schemas)}): {shown}",
            "sql_refused",
        )
    return Migration(request.id, down_sql, tuple(verify), source="api")


def resolve_now(
    service: str, database: DatabaseConfig | None, requests: Sequence[MigrationRequest]
) -> tuple[Migration, ...]:
    """Every requested migration made runnable, in order (blocking: reads files and parses SQL)."""
    if not requests:
        return ()
    if database is None:
        raise Invalid(f"service '{service}' has no database: it takes no migrations", "no_database")
    out = []
    for request in requests:
        if request.inline:
            out.append(inline_migration(database, request))
        elif database.migrations is not None:
            out.append(read_migration(database.migrations, request.id))
        else:
            raise Invalid(
                f"migration {request.id}: service '{service}' names no database.migrations directory "
                "to read its rollback SQL from",
                "no_migrations_dir",
            )
        _check_previous(database, out[-1])
    return tuple(out)


def _check_previous(database: DatabaseConfig, migration: Migration) -> None:
    """What the migration table's kind needs named in the down SQL: Alembic's and golang-migrate's
    previous version (they keep one version row), Liquibase's changeset (its ids repeat)."""
    from watchdogd.rollback import sqltables

    table = database.migrations_table
    if table is None or table.kind not in (*sqltables.NEEDS_PREVIOUS, *sqltables.NEEDS_CHANGESET):
        return
    try:
        script = sqlsplit.parse_script(migration.down_sql)
        if script.changeset is not None:
            sqltables.split_changeset(script.changeset)
    except ScriptError as exc:
        raise Invalid(f"migration {migration.id}: {exc}", "invalid_migration") from None
    reason = sqltables.missing(table, migration.id, script)
    if reason is not None:
        raise Invalid(reason, "invalid_migration")


async def resolve(
    service: str, database: DatabaseConfig | None, requests: Sequence[MigrationRequest]
) -> tuple[Migration, ...]:
    """``resolve_now`` in a worker thread."""
    if not requests:
        return ()
    return await asyncio.to_thread(resolve_now, service, database, requests)


def drifted(migrations: Sequence[Migration]) -> list[str]:
    """The files read at registration that no longer hold what was read then (blocking)."""
    out = []
    for migration in migrations:
        for path, sha in migration.files:
            try:
                now = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError as exc:
                out.append(f"{path} cannot be read now ({type(exc).__name__})")
                continue
            if now != sha:
                out.append(f"{path} changed since registration (sha256 {sha[:12]}... now {now[:12]}...)")
    return out


def _read(path: Path, migration_id: str) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Invalid(
            f"migration {migration_id}: cannot read {path}: {exc.strerror}", "invalid_migration"
        ) from None
    if len(raw) > MAX_FILE:
        raise Invalid(f"migration {migration_id}: {path} is over {MAX_FILE} bytes", "invalid_migration")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"migration {migration_id}: {path} is not UTF-8", "invalid_migration") from None
    return text, hashlib.sha256(raw).hexdigest()


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _unknown(migration_id: str, root: Path, why: str) -> Invalid:
    return Invalid(f"unknown migration {migration_id!r} in {root}: {why}", "unknown_migration")


def _missing(migration_id: str, root: Path, expected: str) -> tuple[Path, Path | None]:
    raise _unknown(migration_id, root, f"no {expected}")
