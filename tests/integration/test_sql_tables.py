"""Liquibase, Sqitch and Atlas migration tables, and the rehearsal just before the real run.

Each test runs against the real PostgreSQL of the test bed, one fresh database per test, with
each tool's own table layout as the tool creates it on PostgreSQL (from its documentation and
its registry scripts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from watchdogd.config.models import ServiceConfig
from watchdogd.errors import Invalid
from watchdogd.rollback.base import Migration, RollbackTarget
from watchdogd.rollback.migrations import MigrationRequest, resolve_now
from watchdogd.rollback.sql import SqlStep

pytestmark = pytest.mark.integration

APP = "CREATE TABLE widgets (id int PRIMARY KEY); CREATE TABLE gadgets (id int PRIMARY KEY)"
DOWN = "DROP TABLE gadgets;\n"

# Liquibase 4.x on PostgreSQL: unquoted names (lower case), no primary key on the changelog.
LIQUIBASE = """
CREATE TABLE public.databasechangeloglock (
    id INTEGER NOT NULL, locked BOOLEAN NOT NULL, lockgranted TIMESTAMP WITHOUT TIME ZONE,
    lockedby VARCHAR(255), CONSTRAINT databasechangeloglock_pkey PRIMARY KEY (id));
INSERT INTO public.databasechangeloglock (id, locked) VALUES (1, FALSE);
CREATE TABLE public.databasechangelog (
    id VARCHAR(255) NOT NULL, author VARCHAR(255) NOT NULL, filename VARCHAR(255) NOT NULL,
    dateexecuted TIMESTAMP WITHOUT TIME ZONE NOT NULL, orderexecuted INTEGER NOT NULL,
    exectype VARCHAR(10) NOT NULL, md5sum VARCHAR(35), description VARCHAR(255), comments VARCHAR(255),
    tag VARCHAR(255), liquibase VARCHAR(20), contexts VARCHAR(255), labels VARCHAR(255),
    deployment_id VARCHAR(10));
INSERT INTO public.databasechangelog (id, author, filename, dateexecuted, orderexecuted, exectype, md5sum,
    description, liquibase, deployment_id) VALUES
  ('1', 'alice', 'db/changelog/001-widgets.yaml', now(), 1, 'EXECUTED', '9:aa', 'createTable', '4.29.2', '1'),
  ('1', 'bob', 'db/changelog/002-gadgets.yaml', now(), 2, 'EXECUTED', '9:bb', 'createTable', '4.29.2', '2'),
  ('2', 'bob', 'db/changelog/002-gadgets.yaml', now(), 3, 'EXECUTED', '9:cc', 'addColumn', '4.29.2', '2');
"""

# Sqitch registry 1.1 on PostgreSQL (App::Sqitch::Engine::pg's pg.sql), in its own schema.
SQITCH = """
CREATE SCHEMA sqitch;
CREATE TABLE sqitch.releases (version REAL PRIMARY KEY, installed_at TIMESTAMPTZ NOT NULL DEFAULT
    clock_timestamp(), installer_name TEXT NOT NULL, installer_email TEXT NOT NULL);
CREATE TABLE sqitch.projects (project TEXT PRIMARY KEY, uri TEXT NULL UNIQUE, created_at TIMESTAMPTZ NOT
    NULL DEFAULT clock_timestamp(), creator_name TEXT NOT NULL, creator_email TEXT NOT NULL);
CREATE TABLE sqitch.changes (
    change_id TEXT PRIMARY KEY, script_hash TEXT NULL, change TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES sqitch.projects(project) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL, planned_at TIMESTAMPTZ NOT NULL,
    planner_name TEXT NOT NULL, planner_email TEXT NOT NULL, UNIQUE (project, script_hash));
CREATE TABLE sqitch.tags (
    tag_id TEXT PRIMARY KEY, tag TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES sqitch.projects(project) ON UPDATE CASCADE,
    change_id TEXT NOT NULL REFERENCES sqitch.changes(change_id) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL, planned_at TIMESTAMPTZ NOT NULL,
    planner_name TEXT NOT NULL, planner_email TEXT NOT NULL, UNIQUE (project, tag));
CREATE TABLE sqitch.dependencies (
    change_id TEXT NOT NULL REFERENCES sqitch.changes(change_id) ON UPDATE CASCADE ON DELETE CASCADE,
    type TEXT NOT NULL, dependency TEXT NOT NULL,
    dependency_id TEXT NULL REFERENCES sqitch.changes(change_id) ON UPDATE CASCADE
        CONSTRAINT dependencies_check CHECK (
            (type = 'require' AND dependency_id IS NOT NULL)
         OR (type = 'conflict' AND dependency_id IS NULL)),
    PRIMARY KEY (change_id, dependency));
CREATE TABLE sqitch.events (
    event TEXT NOT NULL CHECK (event IN ('deploy', 'revert', 'fail', 'merge')),
    change_id TEXT NOT NULL, change TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES sqitch.projects(project) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '', requires TEXT[] NOT NULL DEFAULT '{}', conflicts TEXT[] NOT NULL
    DEFAULT '{}', tags TEXT[] NOT NULL DEFAULT '{}',
    committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL, planned_at TIMESTAMPTZ NOT NULL,
    planner_name TEXT NOT NULL, planner_email TEXT NOT NULL, PRIMARY KEY (change_id, committed_at));
INSERT INTO sqitch.releases VALUES (1.1, now(), 'Ann', 'ann@example.com');
INSERT INTO sqitch.projects VALUES ('shop', NULL, now(), 'Ann', 'ann@example.com');
INSERT INTO sqitch.changes VALUES
  ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'h1', 'widgets', 'shop', 'Adds widgets.', now(),
   'Ann', 'ann@example.com', '2025-01-01', 'Ann', 'ann@example.com'),
  ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'h2', 'gadgets', 'shop', 'Adds gadgets.', now(),
   'Ann', 'ann@example.com', '2025-01-02', 'Ann', 'ann@example.com');
INSERT INTO sqitch.tags VALUES ('t1', '@v1.0', 'shop', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', '',
   now(), 'Ann', 'ann@example.com', '2025-01-02', 'Ann', 'ann@example.com');
INSERT INTO sqitch.dependencies VALUES
  ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'require', 'widgets',
   'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'),
  ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'conflict', 'old_gadgets', NULL);
INSERT INTO sqitch.events (event, change_id, change, project, note, committer_name, committer_email,
    planned_at, planner_name, planner_email) VALUES
  ('deploy', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'gadgets', 'shop', 'Adds gadgets.', 'Ann',
   'ann@example.com', '2025-01-02', 'Ann', 'ann@example.com');
"""

# Atlas's revision table on PostgreSQL, in its own schema.
ATLAS = """
CREATE SCHEMA atlas_schema_revisions;
CREATE TABLE atlas_schema_revisions.atlas_schema_revisions (
    version character varying NOT NULL, description character varying NOT NULL,
    type bigint NOT NULL DEFAULT 2, applied bigint NOT NULL DEFAULT 0, total bigint NOT NULL DEFAULT 0,
    executed_at timestamptz NOT NULL, execution_time bigint NOT NULL, error text NULL,
    error_stmt text NULL, hash character varying NOT NULL, partial_hashes jsonb NULL,
    operator_version character varying NOT NULL, PRIMARY KEY (version));
INSERT INTO atlas_schema_revisions.atlas_schema_revisions VALUES
  ('20250101000000', 'widgets', 2, 1, 1, now(), 1000, NULL, NULL, 'h1', NULL, 'Atlas CLI v0.30.0'),
  ('20250102000000', 'gadgets', 2, 1, 1, now(), 1000, NULL, NULL, 'h2', NULL, 'Atlas CLI v0.30.0');
"""


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(APP)
    yield conn
    await conn.close()


def target(dsn: str, migration_id: str, down_sql: str = DOWN, **database: Any) -> RollbackTarget:
    settings: dict[str, Any] = {
        "lock_timeout": "1s",
        "statement_timeout": "5s",
        "lock_wait": "1s",
        "retry_backoff": "50ms",
        "allow_superuser": True,
        "destructive": "auto",
    }
    settings.update(database)
    config = ServiceConfig.model_validate({"database": {"dsn": dsn, **settings}})
    return RollbackTarget(
        service="api", deployment_id="d1", config=config, migrations=(Migration(migration_id, down_sql, ()),)
    )


async def gadgets_exist(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval("SELECT to_regclass('gadgets') IS NOT NULL"))


async def ledger_rows(db: asyncpg.Connection) -> int:
    if await db.fetchval("SELECT to_regclass('watchdogd.rollback_ledger')") is None:
        return 0
    return int(await db.fetchval("SELECT count(*) FROM watchdogd.rollback_ledger"))


# --- Liquibase ----------------------------------------------------------------------------------


async def test_liquibase_deletes_exactly_the_changeset_named_by_file_id_and_author(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(LIQUIBASE)
    down = "-- watchdogd:changeset db/changelog/002-gadgets.yaml::1::bob\nDROP TABLE gadgets;\n"
    result = await SqlStep().run(target(pg_dsn, "1", down, migrations_table={"kind": "liquibase"}))
    assert result.status == "done", result.detail
    assert not await gadgets_exist(db)
    left = await db.fetch("SELECT id, author, filename FROM databasechangelog ORDER BY orderexecuted")
    assert [tuple(r) for r in left] == [
        ("1", "alice", "db/changelog/001-widgets.yaml"),
        ("2", "bob", "db/changelog/002-gadgets.yaml"),
    ]


async def test_liquibase_changeset_not_in_the_changelog_rolls_everything_back(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(LIQUIBASE)
    down = "-- watchdogd:changeset db/changelog/002-gadgets.yaml::1::carol\nDROP TABLE gadgets;\n"
    result = await SqlStep().run(target(pg_dsn, "1", down, migrations_table={"kind": "liquibase"}))
    assert result.status == "failed", result.detail
    assert "0 rows" in result.detail and "databasechangelog" in result.detail
    assert await gadgets_exist(db)
    assert await db.fetchval("SELECT count(*) FROM databasechangelog") == 3
    assert await ledger_rows(db) == 0


async def test_liquibase_holding_its_lock_makes_the_rollback_wait_its_turn(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(LIQUIBASE)
    await db.execute(
        "UPDATE databasechangeloglock SET locked = TRUE, lockgranted = now(), lockedby = 'ci-runner-7' "
        "WHERE id = 1"
    )
    down = "-- watchdogd:changeset db/changelog/002-gadgets.yaml::1::bob\nDROP TABLE gadgets;\n"
    made = target(pg_dsn, "1", down, migrations_table={"kind": "liquibase"}, retries=1)
    result = await SqlStep().run(made)
    assert result.status == "failed", result.detail
    assert "Liquibase holds its lock (locked by ci-runner-7" in result.detail
    assert "after 2 attempts" in result.detail
    assert await gadgets_exist(db)
    assert await db.fetchval("SELECT count(*) FROM databasechangelog") == 3
    await db.execute("UPDATE databasechangeloglock SET locked = FALSE, lockedby = NULL WHERE id = 1")
    assert (await SqlStep().run(made)).status == "done"


def test_liquibase_without_the_changeset_line_is_refused_at_registration(tmp_path: Any) -> None:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "down.sql").write_text(DOWN)
    config = ServiceConfig.model_validate(
        {
            "database": {
                "dsn": "postgresql://postgres@127.0.0.1/x",
                "migrations": {"dir": str(tmp_path / "m")},
                "migrations_table": {"kind": "liquibase"},
            }
        }
    )
    assert config.database is not None
    with pytest.raises(Invalid) as raised:
        resolve_now("api", config.database, [MigrationRequest("1")])
    assert "-- watchdogd:changeset FILE::ID::AUTHOR" in str(raised.value)
    (folder / "down.sql").write_text("-- watchdogd:changeset only-a-file.yaml\n" + DOWN)
    with pytest.raises(Invalid) as raised:
        resolve_now("api", config.database, [MigrationRequest("1")])
    assert "FILE::ID::AUTHOR" in str(raised.value) and "line 1" in str(raised.value)


# --- Sqitch -------------------------------------------------------------------------------------


async def test_sqitch_removes_the_change_and_records_a_revert_event_as_sqitch_does(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(SQITCH)
    result = await SqlStep().run(target(pg_dsn, "gadgets", migrations_table={"kind": "sqitch"}))
    assert result.status == "done", result.detail
    assert not await gadgets_exist(db)
    assert [r["change"] for r in await db.fetch("SELECT change FROM sqitch.changes")] == ["widgets"]
    assert await db.fetchval("SELECT count(*) FROM sqitch.tags") == 0
    assert await db.fetchval("SELECT count(*) FROM sqitch.dependencies") == 0
    event = await db.fetchrow("SELECT * FROM sqitch.events WHERE event = 'revert'")
    assert event is not None
    assert event["change_id"] == "b" * 40 and event["change"] == "gadgets" and event["project"] == "shop"
    assert event["tags"] == ["@v1.0"]
    assert event["requires"] == ["widgets"] and event["conflicts"] == ["old_gadgets"]
    assert event["note"] == "Adds gadgets." and event["planner_name"] == "Ann"
    assert event["committer_name"] == "watchdogd"
    assert await db.fetchval("SELECT count(*) FROM sqitch.events") == 2  # the deploy event is kept


async def test_sqitch_change_deployed_twice_is_ambiguous_and_nothing_changes(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(SQITCH)
    await db.execute(  # a reworked change: the same name deployed again under a new change_id
        "INSERT INTO sqitch.changes VALUES ('cccccccccccccccccccccccccccccccccccccccc', 'h3', 'gadgets', "
        "'shop', 'Reworks gadgets.', now(), 'Ann', 'ann@example.com', '2025-01-03', 'Ann', 'ann@example.com')"
    )
    result = await SqlStep().run(target(pg_dsn, "gadgets", migrations_table={"kind": "sqitch"}))
    assert result.status == "failed", result.detail
    assert "2 rows" in result.detail and "ambiguous" in result.detail
    assert await gadgets_exist(db)
    assert await db.fetchval("SELECT count(*) FROM sqitch.changes") == 3
    assert await db.fetchval("SELECT count(*) FROM sqitch.tags") == 1
    assert await db.fetchval("SELECT count(*) FROM sqitch.events WHERE event = 'revert'") == 0
    by_id = await SqlStep().run(target(pg_dsn, "c" * 40, migrations_table={"kind": "sqitch"}))
    assert by_id.status == "done", by_id.detail
    assert await db.fetchval("SELECT count(*) FROM sqitch.changes WHERE change = 'gadgets'") == 1


async def test_sqitch_change_not_deployed_rolls_everything_back(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(SQITCH)
    result = await SqlStep().run(target(pg_dsn, "gizmos", migrations_table={"kind": "sqitch"}))
    assert result.status == "failed", result.detail
    assert "0 rows" in result.detail and "sqitch" in result.detail
    assert await gadgets_exist(db)
    assert await ledger_rows(db) == 0


async def test_sqitchs_own_lock_is_taken_so_a_rollback_never_races_sqitch_deploy(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(SQITCH)
    sqitch = await asyncpg.connect(pg_dsn, server_settings={"application_name": "sqitch"})
    try:
        assert await sqitch.fetchval("SELECT pg_try_advisory_lock(75474063)")
        made = target(pg_dsn, "gadgets", migrations_table={"kind": "sqitch"}, lock_wait="300ms")
        result = await SqlStep().run(made)
    finally:
        await sqitch.close()
    assert result.status == "failed", result.detail
    assert "75474063" in result.detail and "sqitch" in result.detail
    assert await gadgets_exist(db)
    assert (await SqlStep().run(made)).status == "done"  # once sqitch is done


# --- Atlas --------------------------------------------------------------------------------------


async def test_atlas_deletes_the_version_row(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(ATLAS)
    result = await SqlStep().run(target(pg_dsn, "20250102000000", migrations_table={"kind": "atlas"}))
    assert result.status == "done", result.detail
    assert not await gadgets_exist(db)
    versions = await db.fetch("SELECT version FROM atlas_schema_revisions.atlas_schema_revisions")
    assert [r["version"] for r in versions] == ["20250101000000"]


async def test_atlas_version_not_applied_rolls_everything_back(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(ATLAS)
    result = await SqlStep().run(target(pg_dsn, "20250103000000", migrations_table={"kind": "atlas"}))
    assert result.status == "failed", result.detail
    assert "0 rows" in result.detail and "atlas_schema_revisions" in result.detail
    assert await gadgets_exist(db)
    assert await db.fetchval("SELECT count(*) FROM atlas_schema_revisions.atlas_schema_revisions") == 2


def test_sqitch_takes_a_schema_not_a_table() -> None:
    with pytest.raises(ValueError, match="set schema, not table"):
        ServiceConfig.model_validate(
            {"database": {"dsn": "postgresql://x@h/d", "migrations_table": {"kind": "sqitch", "table": "t"}}}
        )


# --- rehearsal just before the real run -----------------------------------------------------------


async def test_rehearse_first_stops_the_step_when_the_rehearsal_fails(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (pid int REFERENCES parent "
        "DEFERRABLE INITIALLY DEFERRED); INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1)"
    )
    down = "DROP TABLE gadgets;\nDELETE FROM parent;\n-- watchdogd:no-transaction\nDROP TABLE widgets;\n"
    result = await SqlStep().run(target(pg_dsn, "m1", down, rehearse_first=True))
    assert result.status == "failed", result.detail
    assert "rehearse_first" in result.detail and "23503" in result.detail
    assert await gadgets_exist(db)
    assert await db.fetchval("SELECT to_regclass('widgets') IS NOT NULL")
    assert await ledger_rows(db) == 0


async def test_rehearse_first_runs_the_step_when_the_rehearsal_passes(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(ATLAS)
    step = SqlStep()
    made = target(pg_dsn, "20250102000000", migrations_table={"kind": "atlas"}, rehearse_first=True)
    result = await step.run(made)
    assert result.status == "done", result.detail
    assert not await gadgets_exist(db)
    again = await step.run(
        made
    )  # done already: not rehearsed again (it would fail), answered from the ledger
    assert again.status == "already_done", again.detail


async def test_rehearse_first_refuses_what_a_rehearsal_cannot_undo(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE SEQUENCE ids; SELECT setval('ids', 100)")
    made = target(pg_dsn, "m1", "DROP TABLE gadgets; SELECT setval('ids', 1);", rehearse_first=True)
    result = await SqlStep().run(made)
    assert result.status == "failed", result.detail
    assert "setval" in result.detail and "rehearse_first" in result.detail
    assert await gadgets_exist(db)
    assert await db.fetchval("SELECT last_value FROM ids") == 100
    plain = await SqlStep().run(
        dataclasses.replace(made, deployment_id="d2", config=target(pg_dsn, "m1").config)
    )
    assert plain.status == "done", plain.detail  # without rehearse_first the same SQL runs
