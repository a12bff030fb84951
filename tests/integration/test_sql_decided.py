"""The sql step decided when it runs, parsed, re-runnable, side-effect free, bounded, least-privileged.

Each test runs against the real PostgreSQL of the test bed, one fresh database per test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from watchdogd.config.models import ServiceConfig
from watchdogd.demo.seed000 import (
    BASE_SCHEMA,
    MIGRATION_ID,
    SEED_ROLLBACK,
    SEED_VERIFY,
    UP_MIGRATION,
    snapshot,
)
from watchdogd.errors import Invalid
from watchdogd.rollback.base import Migration, RollbackTarget
from watchdogd.rollback.migrations import MigrationRequest, resolve_now
from watchdogd.rollback.sql import SqlStep

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(BASE_SCHEMA)
    yield conn
    await conn.close()


def target(
    dsn: str,
    down_sql: str = SEED_ROLLBACK,
    verify: tuple[str, ...] = SEED_VERIFY,
    migration_id: str = MIGRATION_ID,
    deployment_id: str = "d1",
    approved_by: str | None = None,
    **database: Any,
) -> RollbackTarget:
    settings: dict[str, Any] = {
        "lock_timeout": "1s",
        "statement_timeout": "5s",
        "lock_wait": "1s",
        "retry_backoff": "50ms",
        "allow_superuser": True,
    }
    settings.update(database)
    config = ServiceConfig.model_validate({"database": {"dsn": dsn, **settings}})
    made = RollbackTarget(
        service="api",
        deployment_id=deployment_id,
        config=config,
        migrations=(Migration(migration_id, down_sql, verify),),
    )
    return dataclasses.replace(made, approved_by=approved_by) if approved_by else made


async def seed_rows(db: asyncpg.Connection) -> None:
    """What the app wrote after the deploy was registered: 500 images, 50 import jobs, 500 external ids."""
    await db.execute(
        "INSERT INTO products (id, \"companyId\", name) SELECT 'x' || g, 'c1', 'n' FROM "
        "generate_series(1, 500) g"
    )
    await db.execute(
        'INSERT INTO product_images (id, "companyId", "productId", url) '
        "SELECT 'i' || g, 'c1', 'x' || g, 'u' FROM generate_series(1, 500) g"
    )
    await db.execute(
        'INSERT INTO product_import_jobs (id, "companyId", provider) '
        "SELECT 'j' || g, 'c1', 'p' FROM generate_series(2, 50) g"
    )
    await db.execute("UPDATE products SET \"externalId\" = 'e' || id WHERE id LIKE 'x%'")


# --- 1. decided when it runs ------------------------------------------------------------------


async def test_rows_written_after_registration_need_approval_when_the_rollback_runs(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    await db.execute(
        'DELETE FROM product_import_jobs; UPDATE products SET "externalId" = NULL, "importSource" = NULL'
    )
    assert (await SqlStep().assess(target(pg_dsn))).action == "run"  # empty at registration
    await seed_rows(db)

    result = await SqlStep().run(target(pg_dsn))

    assert result.status == "failed", result.detail
    assert "approval" in result.detail
    assert "product_images holding 500 rows" in result.detail
    assert "product_import_jobs holding 49 rows" in result.detail
    assert "products.externalId holding 500 non-null values" in result.detail
    assert await db.fetchval("SELECT count(*) FROM product_images") == 500
    assert await db.fetchval(
        "SELECT to_regclass('watchdogd.rollback_ledger') IS NULL "
        "OR NOT EXISTS (SELECT 1 FROM watchdogd.rollback_ledger)"
    )

    approved = await SqlStep().run(target(pg_dsn, approved_by="alice"))
    assert approved.status == "done", approved.detail
    counted = {(f["table"], f["column"]): f["rows"] for f in approved.data["assessment"]["findings"]}
    assert counted[("product_images", None)] == 500
    assert "product_images holding 500 rows" in approved.detail
    assert await db.fetchval("SELECT to_regclass('product_images') IS NULL")


async def test_destructive_refuse_applies_to_the_count_at_execution(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    await seed_rows(db)
    result = await SqlStep().run(target(pg_dsn, destructive="refuse", approved_by="alice"))
    assert result.status == "skipped", result.detail
    assert "refuse" in result.detail and "500 rows" in result.detail
    assert await db.fetchval("SELECT to_regclass('product_images') IS NOT NULL")


async def test_an_unreachable_database_at_registration_is_reported_and_keeps_the_step() -> None:
    assessment = await SqlStep(connect_timeout=1.0).assess(target("postgresql://postgres@127.0.0.1:1/x"))
    assert assessment.action != "refuse"
    assert assessment.unreachable is not None and "cannot connect" in assessment.unreachable


# --- 2. parsed, not grepped --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "down", "expected"),
    [
        ("", "DELETE FROM products WHERE \"companyId\" = 'c1'", "deletes table products holding 2 rows"),
        ("", "UPDATE products SET price = 0", "updates table products holding 2 rows"),
        (
            "CREATE SCHEMA imports; CREATE TABLE imports.jobs (id int); "
            "INSERT INTO imports.jobs VALUES (1), (2)",
            "DROP SCHEMA imports CASCADE",
            "drops table imports.jobs holding 2 rows",
        ),
        (
            "CREATE TYPE mood AS ENUM ('a', 'b'); ALTER TABLE products ADD COLUMN m mood; "
            "UPDATE products SET m = 'a'",
            "DROP TYPE mood CASCADE",
            "drops column public.products.m holding 2 non-null values",
        ),
        ("", "ALTER TABLE products ALTER COLUMN price TYPE int", "changes the type of column products.price"),
        ("", "DO $$ BEGIN EXECUTE 'DROP TABLE products CASCADE'; END $$", "DO block"),
        (
            "",
            "WITH gone AS (DELETE FROM products RETURNING id) SELECT count(*) FROM gone",
            "deletes table products holding 2 rows",
        ),
        ("", "TRUNCATE companies CASCADE", "empties table public.products holding 2 rows"),
    ],
)
async def test_destructive_sql_the_keywords_missed_needs_approval(
    pg_dsn: str, db: asyncpg.Connection, setup: str, down: str, expected: str
) -> None:
    if setup:
        await db.execute(setup)
    assessment = await SqlStep().assess(target(pg_dsn, down, ()))
    assert assessment.action == "approve", assessment
    assert expected in " ".join(str(f) for f in assessment.findings)


@pytest.mark.parametrize(
    "down",
    [
        "ALTER ROLE postgres SUPERUSER",
        "ALTER SYSTEM SET fsync = off",
        "DROP DATABASE other",
        "COPY products TO PROGRAM 'cat > /tmp/x'",
        "GRANT ALL ON products TO PUBLIC",
        "CREATE EXTENSION IF NOT EXISTS plpgsql",
    ],
)
async def test_role_grant_system_database_program_and_extension_are_refused_always(
    pg_dsn: str, db: asyncpg.Connection, down: str
) -> None:
    assessment = await SqlStep().assess(target(pg_dsn, down, (), destructive="auto"))
    assert assessment.action == "refuse"
    ran = await SqlStep().run(target(pg_dsn, down, (), destructive="auto", approved_by="alice"))
    assert ran.status != "done"
    assert "line 1" in ran.detail


# --- 3. exactly once per deployment -------------------------------------------------------------


async def test_a_migration_applied_again_is_rolled_back_again_for_the_next_deployment(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    before = await snapshot(db)
    await db.execute(UP_MIGRATION)
    first = await SqlStep().run(target(pg_dsn, destructive="auto"))
    assert first.status == "done", first.detail
    await db.execute(UP_MIGRATION)
    second = await SqlStep().run(target(pg_dsn, destructive="auto", deployment_id="d2"))
    assert second.status == "done", second.detail
    assert await snapshot(db) == before
    again = await SqlStep().run(target(pg_dsn, destructive="auto", deployment_id="d2"))
    assert again.status == "already_done"
    rows = await db.fetch("SELECT deployment_id FROM watchdogd.rollback_ledger")
    assert [r[0] for r in rows] == ["d2"]
    history = await db.fetch("SELECT deployment_id FROM watchdogd.rollback_ledger_history")
    assert [r[0] for r in history] == ["d1"]


# --- 4. rehearsal without side effects --------------------------------------------------------


async def test_a_rehearsal_calling_setval_is_refused_and_the_sequence_untouched(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE SEQUENCE ids; SELECT setval('ids', 100)")
    result = await SqlStep().rehearse(target(pg_dsn, "SELECT setval('ids', 1)", ()))
    assert result.status == "failed"
    assert "setval" in result.detail and "line 1" in result.detail
    assert await db.fetchval("SELECT last_value FROM ids") == 100


async def test_a_rehearsal_never_waits_long_for_the_apps_locks(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(UP_MIGRATION)
    blocker = await asyncpg.connect(pg_dsn)
    try:
        await blocker.execute("BEGIN; SELECT * FROM product_images")  # the app's reader
        started = time.monotonic()
        result = await SqlStep().rehearse(target(pg_dsn, lock_timeout="5s"))
        took = time.monotonic() - started
    finally:
        await blocker.close()
    assert result.status == "failed"
    assert "55P03" in result.detail
    assert took < 2.0


async def test_a_rehearsal_checks_deferred_constraints(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(
        "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (pid int REFERENCES parent "
        "DEFERRABLE INITIALLY DEFERRED); INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1)"
    )
    result = await SqlStep().rehearse(target(pg_dsn, "DELETE FROM parent", (), destructive="auto"))
    assert result.status == "failed", result.detail
    assert "23503" in result.detail
    assert await db.fetchval("SELECT count(*) FROM parent") == 1


# --- 5. migration tables -----------------------------------------------------------------------


async def test_a_prisma_update_matching_no_row_rolls_everything_back(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    await db.execute(
        'CREATE TABLE "_prisma_migrations" (id text PRIMARY KEY, migration_name text NOT NULL, '
        "rolled_back_at timestamptz)"
    )
    result = await SqlStep().run(target(pg_dsn, destructive="auto", migrations_table={"kind": "prisma"}))
    assert result.status == "failed", result.detail
    assert "0 rows" in result.detail and "_prisma_migrations" in result.detail
    assert await db.fetchval("SELECT to_regclass('product_images') IS NOT NULL")


@pytest.mark.parametrize("kind", ["alembic", "golang-migrate"])
def test_alembic_or_golang_migrate_without_a_previous_version_is_refused_at_registration(
    tmp_path: Any, kind: str
) -> None:
    folder = tmp_path / "m" / "20251227000000"
    folder.mkdir(parents=True)
    (folder / "down.sql").write_text("DROP TABLE IF EXISTS x;\n")
    config = ServiceConfig.model_validate(
        {
            "database": {
                "dsn": "postgresql://postgres@127.0.0.1/x",
                "migrations": {"dir": str(tmp_path / "m")},
                "migrations_table": {"kind": kind},
            }
        }
    )
    assert config.database is not None
    with pytest.raises(Invalid) as raised:
        resolve_now("api", config.database, [MigrationRequest("20251227000000")])
    assert "-- watchdogd:previous-version" in str(raised.value)


# --- 6. time-bounded ---------------------------------------------------------------------------


async def test_the_session_bounds_idle_transactions_and_keeps_tcp_alive(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    seen: dict[str, str] = {}

    async def look(point: str, conn: asyncpg.Connection) -> None:
        if point == "commit":
            for name in ("idle_in_transaction_session_timeout", "tcp_keepalives_idle", "statement_timeout"):
                seen[name] = await conn.fetchval(f"SELECT current_setting('{name}')")

    await db.execute(UP_MIGRATION)
    result = await SqlStep(fault=look).run(target(pg_dsn, destructive="auto"))
    assert result.status == "done", result.detail
    assert seen["idle_in_transaction_session_timeout"] not in ("0", "")
    assert seen["tcp_keepalives_idle"] not in ("0", "")


async def test_a_query_cancelled_by_a_dba_is_not_retried(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE t (id int)")

    async def cancel_soon() -> None:
        for _ in range(100):
            pid = await db.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' AND state = 'active'"
            )
            if pid:
                await db.execute("SELECT pg_cancel_backend($1)", pid)
                return
            await asyncio.sleep(0.05)

    canceller = asyncio.create_task(cancel_soon())
    result = await SqlStep().run(
        target(pg_dsn, "SELECT pg_sleep(3);\nDROP TABLE t", (), destructive="auto", retries=3)
    )
    await canceller
    assert result.status == "failed"
    assert "57014" in result.detail
    assert result.data["migrations"][0]["attempts"] == 1
    assert await db.fetchval("SELECT to_regclass('t') IS NOT NULL")


@pytest.mark.parametrize(
    ("down", "words"),
    [
        ("\\connect other\nDROP TABLE products;", "psql meta-command"),
        ("COPY products FROM stdin;\n1\tx\n\\.\n", "STDIN"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
            "BEGIN ATOMIC",
        ),
    ],
)
async def test_psql_meta_commands_copy_from_stdin_and_begin_atomic_are_refused_clearly(
    pg_dsn: str, db: asyncpg.Connection, down: str, words: str
) -> None:
    result = await SqlStep().run(target(pg_dsn, down, (), destructive="auto", approved_by="alice"))
    assert result.status != "done"
    assert words in result.detail, result.detail
    assert await db.fetchval("SELECT to_regclass('products') IS NOT NULL")


# --- 7. least privilege ------------------------------------------------------------------------


async def test_a_least_privilege_role_with_a_precreated_schema_runs_the_step(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    role = f"wd_least_{uuid.uuid4().hex[:10]}"
    await db.execute(UP_MIGRATION)
    await db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        for (table,) in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
            await db.execute(f'ALTER TABLE public."{table}" OWNER TO {role}')
        for name in ("ImportJobPhase", "ImportJobStatus"):
            await db.execute(f'ALTER TYPE public."{name}" OWNER TO {role}')
        database = await db.fetchval("SELECT current_database()")
        await db.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC')
        await db.execute("CREATE SCHEMA watchdogd")
        await db.execute(f"GRANT USAGE, CREATE ON SCHEMA watchdogd TO {role}")
        least = pg_dsn.replace("postgres@", f"{role}@", 1)
        result = await SqlStep().run(
            dataclasses.replace(
                target(least, destructive="auto"),
                config=target(least, allow_superuser=False, destructive="auto").config,
            )
        )
        assert result.status == "done", result.detail
        assert await db.fetchval("SELECT to_regclass('product_images') IS NULL")
        assert await db.fetchval("SELECT count(*) FROM watchdogd.rollback_ledger") == 1
    finally:
        await db.execute(f"REASSIGN OWNED BY {role} TO postgres")
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")


async def test_the_prisma_migrators_advisory_lock_is_taken(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(UP_MIGRATION)
    await db.execute('CREATE TABLE "_prisma_migrations" (migration_name text, rolled_back_at timestamptz)')
    await db.execute(f"INSERT INTO \"_prisma_migrations\" VALUES ('{MIGRATION_ID}', NULL)")
    migrator = await asyncpg.connect(pg_dsn, server_settings={"application_name": "prisma-migrate"})
    try:
        await migrator.execute("SELECT pg_advisory_lock(72707369)")
        result = await SqlStep().run(
            target(pg_dsn, destructive="auto", lock_wait="300ms", migrations_table={"kind": "prisma"})
        )
    finally:
        await migrator.close()
    assert result.status == "failed"
    assert "72707369" in result.detail and "prisma-migrate" in result.detail
    assert await db.fetchval("SELECT to_regclass('product_images') IS NOT NULL")
