"""The app's own migration table, updated in the rollback's transaction (see MigrationsTable).

Each update must touch exactly one row: none means the table does not record
the migration as applied (a wrong id, a wrong table), more means the match is
ambiguous; either way the transaction is rolled back with the reason. Alembic
and golang-migrate need the version to go back to (``-- watchdogd:previous-version``):
deleting the version row would make the next ``upgrade``/``up`` replay every
migration, so a script without it is refused when the deployment is registered.
"""

from __future__ import annotations

from watchdogd.config.models import MigrationsTable
from watchdogd.rollback.sqlsplit import ScriptError

PRISMA_LOCK = 72707369
"""The advisory lock ``prisma migrate`` holds while it migrates (PostgreSQL): taken so a rollback never
races a ``migrate deploy``."""

NEEDS_PREVIOUS = ("alembic", "golang-migrate")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: MigrationsTable) -> str:
    return f"{quote_ident(table.schema_)}.{quote_ident(table.table_name)}"


def missing_previous(table: MigrationsTable, migration_id: str) -> str:
    """Why a script without ``-- watchdogd:previous-version`` is refused for this table's kind."""
    what = "down revision" if table.kind == "alembic" else "previous version"
    return (
        f"migration {migration_id}: {table.kind} keeps one version row; without the {what} watchdogd "
        f"would delete it and the next migrate would replay every migration: add a line "
        f"'-- watchdogd:previous-version VALUE' naming the {what} to the down SQL"
    )


def table_update(
    table: MigrationsTable, migration_id: str, previous: str | None
) -> tuple[str, tuple[object, ...]]:
    """The app's migration table update with its parameters; it must touch exactly one row."""
    name = qualified(table)
    if table.kind == "prisma":
        return (
            f"UPDATE {name} SET rolled_back_at = now() WHERE migration_name = $1 AND rolled_back_at IS NULL",
            (migration_id,),
        )
    if table.kind == "flyway":
        return f"DELETE FROM {name} WHERE version = $1", (migration_id,)
    if table.kind in NEEDS_PREVIOUS and previous is None:
        raise ScriptError(missing_previous(table, migration_id))
    if table.kind == "alembic":
        return f"UPDATE {name} SET version_num = $2 WHERE version_num = $1", (migration_id, previous)
    version = _version(migration_id, "migration id")
    prev = _version(previous or "", "previous-version")
    return f"UPDATE {name} SET version = $2, dirty = false WHERE version = $1", (version, prev)


def rows_touched(status: str) -> int | None:
    """The row count of a command status (``UPDATE 1``, ``DELETE 0``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


def _version(text: str, what: str) -> int:
    if not text.isdigit():
        raise ScriptError(f"golang-migrate versions are integers; {what} '{text}' is not")
    return int(text)
