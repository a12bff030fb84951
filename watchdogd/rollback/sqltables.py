"""The app's own migration table, updated in the rollback's transaction (see MigrationsTable).

Each update that names the migration must touch exactly one row: none means
the table does not record the migration as applied (a wrong id, a wrong
table), more means the match is ambiguous; either way the transaction is
rolled back with the reason. Alembic and golang-migrate need the version to go
back to (``-- watchdogd:previous-version``): deleting the version row would make
the next ``upgrade``/``up`` replay every migration, so a script without it is
refused when the deployment is registered.

Liquibase identifies a changeset by id, author and changelog file together,
and ids such as ``1`` repeat from file to file: the down SQL names all three
(``-- watchdogd:changeset FILE::ID::AUTHOR``, Liquibase's own notation) or is
refused at registration. Sqitch's revert is done as sqitch does it: the
change's tags and dependencies deleted, its ``changes`` row deleted and a
``revert`` event recorded with the tags, requires and conflicts it had. Atlas
keeps one row per applied version: it is deleted, as ``atlas migrate down`` does.

The migrators' own locks are respected: Prisma's and Sqitch's advisory locks
are taken for the rollback's session (``MIGRATOR_LOCKS``); Liquibase's
``databasechangeloglock`` row (the changelog table's name + ``lock``) is locked
in the rollback's transaction, and a lock Liquibase holds fails the attempt
(retried as a lock timeout is).
"""

from __future__ import annotations

from dataclasses import dataclass

from watchdogd.config.models import MigrationsTable
from watchdogd.rollback.sqlsplit import Script, ScriptError

PRISMA_LOCK = 72707369
"""The advisory lock ``prisma migrate`` holds while it migrates (PostgreSQL): taken so a rollback never
races a ``migrate deploy``."""

SQITCH_LOCK = 75474063
"""The advisory lock ``sqitch deploy``/``revert`` holds on PostgreSQL."""
MIGRATOR_LOCKS = {"prisma": PRISMA_LOCK, "sqitch": SQITCH_LOCK}
"""The app migrator's own lock, taken for the rollback's session when the migration table is its."""

NEEDS_PREVIOUS = ("alembic", "golang-migrate")
NEEDS_CHANGESET = ("liquibase",)
SQITCH_COMMITTER = "watchdogd"
"""The ``committer_name`` of the revert events watchdogd records in Sqitch's registry."""


@dataclass(frozen=True, slots=True)
class TableUpdate:
    """One statement of the migration table update; ``expect`` rows touched (None: any number)."""

    query: str
    args: tuple[object, ...]
    expect: int | None = 1
    what: str = ""
    """What the statement does to which table, for the reason when it touches the wrong count."""
    guard: bool = False
    """A query answering why the update must not happen now (a migrator holding its lock), or NULL."""

    def mismatch(self, touched: int | None, migration_id: str) -> str | None:
        """Why ``touched`` rows is wrong for this update, or None when it is right."""
        if self.expect is None or touched == self.expect:
            return None
        if touched == 0:
            return (
                f"{self.what} touched 0 rows, not 1: it does not record migration {migration_id} as applied"
            )
        return (
            f"{self.what} touched {touched} rows, not 1: more than one row matches migration {migration_id}, "
            "which one to undo is ambiguous"
        )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: MigrationsTable, name: str | None = None) -> str:
    return f"{quote_ident(table.schema_name)}.{quote_ident(name or table.table_name)}"


def missing_previous(table: MigrationsTable, migration_id: str) -> str:
    """Why a script without ``-- watchdogd:previous-version`` is refused for this table's kind."""
    what = "down revision" if table.kind == "alembic" else "previous version"
    return (
        f"migration {migration_id}: {table.kind} keeps one version row; without the {what} watchdogd "
        f"would delete it and the next migrate would replay every migration: add a line "
        f"'-- watchdogd:previous-version VALUE' naming the {what} to the down SQL"
    )


def missing_changeset(migration_id: str) -> str:
    """Why a script without ``-- watchdogd:changeset`` is refused for Liquibase."""
    return (
        f"migration {migration_id}: Liquibase identifies a changeset by its file, id and author together "
        "(ids repeat from file to file): add a line '-- watchdogd:changeset FILE::ID::AUTHOR' to the down "
        "SQL, FILE as the FILENAME column of DATABASECHANGELOG holds it"
    )


def missing(table: MigrationsTable | None, migration_id: str, script: Script) -> str | None:
    """What the down SQL lacks for this table's kind, checked at registration; None: nothing."""
    if table is None:
        return None
    if table.kind in NEEDS_PREVIOUS and script.previous_version is None:
        return missing_previous(table, migration_id)
    if table.kind in NEEDS_CHANGESET and script.changeset is None:
        return missing_changeset(migration_id)
    return None


def table_updates(table: MigrationsTable, migration_id: str, script: Script) -> tuple[TableUpdate, ...]:
    """The app's migration table updates, in order, with their parameters."""
    name = qualified(table)
    previous = script.previous_version
    reason = missing(table, migration_id, script)
    if reason is not None:
        raise ScriptError(reason)
    if table.kind == "prisma":
        return (
            TableUpdate(
                f"UPDATE {name} SET rolled_back_at = now() "
                "WHERE migration_name = $1 AND rolled_back_at IS NULL",
                (migration_id,),
                what=f"the update of {name}",
            ),
        )
    if table.kind == "flyway":
        return (
            TableUpdate(
                f"DELETE FROM {name} WHERE version = $1", (migration_id,), what=f"the delete from {name}"
            ),
        )
    if table.kind == "alembic":
        return (
            TableUpdate(
                f"UPDATE {name} SET version_num = $2 WHERE version_num = $1",
                (migration_id, previous),
                what=f"the update of {name}",
            ),
        )
    if table.kind == "liquibase":
        path, changeset, author = split_changeset(script.changeset or "")
        lock = qualified(table, table.table_name + "lock")
        return (
            # Liquibase's own lock row, held until the commit: an update starting now waits for the
            # rollback; one running now has the row marked locked, and the rollback waits its turn.
            TableUpdate(
                "SELECT CASE WHEN locked THEN 'Liquibase holds its lock (locked by ' || "
                "coalesce(lockedby, '?') || ' since ' || coalesce(lockgranted::text, '?') || "
                f"'): an update is running' END FROM {lock} WHERE id = 1 FOR UPDATE",
                (),
                guard=True,
            ),
            TableUpdate(
                f"DELETE FROM {name} WHERE id = $1 AND author = $2 AND filename = $3",
                (changeset, author, path),
                what=f"the delete of changeset {script.changeset} from {name}",
            ),
        )
    if table.kind == "sqitch":
        return _sqitch(table, migration_id)
    if table.kind == "atlas":
        return (
            TableUpdate(
                f"DELETE FROM {name} WHERE version = $1", (migration_id,), what=f"the delete from {name}"
            ),
        )
    version = _version(migration_id, "migration id")
    prev = _version(previous or "", "previous-version")
    return (
        TableUpdate(
            f"UPDATE {name} SET version = $2, dirty = false WHERE version = $1",
            (version, prev),
            what=f"the update of {name}",
        ),
    )


def split_changeset(value: str) -> tuple[str, str, str]:
    """``FILE::ID::AUTHOR`` (Liquibase's notation) as its three parts; ScriptError when it is not."""
    parts = value.rsplit("::", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ScriptError(
            f"'-- watchdogd:changeset {value}': expected FILE::ID::AUTHOR, as Liquibase prints a changeset"
        )
    path, changeset, author = parts
    return path, changeset, author


def _sqitch(table: MigrationsTable, migration_id: str) -> tuple[TableUpdate, ...]:
    """Sqitch's revert of one change: the event first (it reads what the deletes remove), then the rows.

    The change is named by its name (``change``) or its 40-hex ``change_id``; a name deployed twice (a
    reworked change, or two projects in one registry) matches two rows and is refused as ambiguous.
    """
    changes, tags, deps, events = (qualified(table, t) for t in ("changes", "tags", "dependencies", "events"))
    match = "(c.change = $1 OR c.change_id = $1)"
    event = (
        f"INSERT INTO {events} (event, change_id, change, project, note, tags, requires, conflicts, "
        "committer_name, committer_email, planned_at, planner_name, planner_email, committed_at) "
        "SELECT 'revert', c.change_id, c.change, c.project, c.note, "
        f"ARRAY(SELECT t.tag FROM {tags} t WHERE t.change_id = c.change_id ORDER BY t.committed_at), "
        f"ARRAY(SELECT d.dependency FROM {deps} d WHERE d.change_id = c.change_id AND d.type = 'require' "
        "ORDER BY d.dependency), "
        f"ARRAY(SELECT d.dependency FROM {deps} d WHERE d.change_id = c.change_id AND d.type = 'conflict' "
        "ORDER BY d.dependency), "
        "$2, '', c.planned_at, c.planner_name, c.planner_email, clock_timestamp() "
        f"FROM {changes} c WHERE {match}"
    )
    of = f"(SELECT c.change_id FROM {changes} c WHERE {match})"
    return (
        TableUpdate(event, (migration_id, SQITCH_COMMITTER), what=f"the revert event from {changes}"),
        TableUpdate(f"DELETE FROM {tags} WHERE change_id IN {of}", (migration_id,), expect=None),
        TableUpdate(f"DELETE FROM {deps} WHERE change_id IN {of}", (migration_id,), expect=None),
        TableUpdate(
            f"DELETE FROM {changes} c WHERE {match}", (migration_id,), what=f"the delete from {changes}"
        ),
    )


def rows_touched(status: str) -> int | None:
    """The row count of a command status (``UPDATE 1``, ``DELETE 0``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


def _version(text: str, what: str) -> int:
    if not text.isdigit():
        raise ScriptError(f"golang-migrate versions are integers; {what} '{text}' is not")
    return int(text)
