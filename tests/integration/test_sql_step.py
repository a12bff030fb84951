"""The sql step on the real PostgreSQL: one fresh database per test."""

from __future__ import annotations

import hashlib
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
from watchdogd.rollback.base import Migration, RollbackTarget
from watchdogd.rollback.sql import SqlStep, advisory_key

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn, server_settings={"application_name": "test-observer"})
    await conn.execute(BASE_SCHEMA)
    yield conn
    await conn.close()


async def ledger(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('watchdogd.rollback_ledger') IS NOT NULL")
    return list(await conn.fetch("SELECT * FROM watchdogd.rollback_ledger")) if exists else []


def target(
    dsn: str,
    down_sql: str = SEED_ROLLBACK,
    verify: tuple[str, ...] = SEED_VERIFY,
    migration_id: str = MIGRATION_ID,
    **database: Any,
) -> RollbackTarget:
    # the test bed connects as postgres; tests/integration/test_sql_sources.py runs as a least-privilege role
    settings: dict[str, Any] = {
        "lock_timeout": "1s",
        "statement_timeout": "5s",
        "lock_wait": "1s",
        "retry_backoff": "50ms",
        "allow_superuser": True,
        "destructive": "auto",  # the assessment at execution: tests/integration/test_sql_decided.py
    }
    settings.update(database)
    config = ServiceConfig.model_validate({"database": {"dsn": dsn, **settings}})
    return RollbackTarget(
        service="api",
        deployment_id="dep-42",
        config=config,
        migrations=(Migration(migration_id, down_sql, verify),),
    )


async def test_seed_000_rollback_restores_the_schema_exactly_once(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    before = await snapshot(db)
    await db.execute(UP_MIGRATION)
    assert await snapshot(db) != before

    result = await SqlStep().run(target(pg_dsn))

    assert result.status == "done", result.detail
    assert await snapshot(db) == before
    rows = await ledger(db)
    assert [(r["service"], r["migration_id"], r["deployment_id"], r["phase"]) for r in rows] == [
        ("api", MIGRATION_ID, "dep-42", "complete")
    ]
    assert rows[0]["sql_sha256"] == hashlib.sha256(SEED_ROLLBACK.encode()).hexdigest()

    again = await SqlStep().run(target(pg_dsn))
    assert again.status == "already_done", again.detail
    assert "dep-42" in again.detail
    assert await snapshot(db) == before
    assert [tuple(r) for r in await ledger(db)] == [tuple(r) for r in rows]


async def test_advisory_lock_held_elsewhere_fails_naming_the_holder(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    holder = await asyncpg.connect(pg_dsn, server_settings={"application_name": "deploy-pipeline"})
    try:
        database = await holder.fetchval("SELECT current_database()")
        await holder.execute("SELECT pg_advisory_lock($1, $2)", *advisory_key("api", database))
        result = await SqlStep().run(target(pg_dsn, lock_wait="300ms"))
        pid = holder.get_server_pid()
    finally:
        await holder.close()
    assert result.status == "failed"
    assert "still busy after 0.3s" in result.detail
    assert "application_name='deploy-pipeline'" in result.detail
    assert f"pid {pid}" in result.detail
    assert await ledger(db) == []
    assert await db.fetchval("SELECT to_regclass('product_images') IS NOT NULL")


async def test_lock_timeout_is_retried_then_fails_with_nothing_applied(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    down = 'ALTER TABLE "products" DROP COLUMN IF EXISTS "externalSku";\nDROP TABLE "storage_usage";'
    blocker = await asyncpg.connect(pg_dsn)
    try:
        await blocker.execute("BEGIN; LOCK TABLE storage_usage IN ACCESS EXCLUSIVE MODE")
        result = await SqlStep().run(target(pg_dsn, down, (), lock_timeout="100ms", retries=2))
    finally:
        await blocker.close()
    assert result.status == "failed"
    assert "SQLSTATE 55P03" in result.detail
    assert "line 2" in result.detail
    assert "after 3 attempts" in result.detail
    assert result.data["migrations"][0]["attempts"] == 3
    # the first statement succeeded inside the transaction, and was rolled back with it
    assert await db.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'products' "
        "AND column_name = 'externalSku'"
    )
    assert await ledger(db) == []


async def test_failing_verify_query_rolls_everything_back(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(UP_MIGRATION)
    before = await snapshot(db)
    bad = "SELECT count(*) = 0 FROM products"
    result = await SqlStep().run(target(pg_dsn, verify=(*SEED_VERIFY, bad)))
    assert result.status == "failed"
    assert f"not true: {bad}" in result.detail
    assert "nothing applied" in result.detail
    assert await snapshot(db) == before
    assert await ledger(db) == []


async def test_concurrently_without_marker_is_refused_before_touching_anything(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    before = await snapshot(db)
    down = 'DROP TABLE IF EXISTS "storage_usage";\nDROP INDEX CONCURRENTLY "products_companyId_idx";\n'
    result = await SqlStep().run(target(pg_dsn, down, ()))
    assert result.status == "failed"
    assert "line 2: DROP INDEX CONCURRENTLY cannot run inside a transaction" in result.detail
    assert 'DROP INDEX CONCURRENTLY "products_companyId_idx"' in result.detail
    assert await snapshot(db) == before
    assert not await db.fetchval("SELECT to_regnamespace('watchdogd') IS NOT NULL")


NO_TX_DOWN = """ALTER TABLE "products" DROP COLUMN IF EXISTS "externalSku";
-- watchdogd:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS "products_lastSyncedAt_idx";
CREATE INDEX CONCURRENTLY IF NOT EXISTS "products_name_idx" ON "products" ("name");
"""


async def test_no_transaction_phase_runs_after_commit_and_is_recorded(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    result = await SqlStep().run(target(pg_dsn, NO_TX_DOWN, ()))
    assert result.status == "done", result.detail
    assert await db.fetchval("SELECT to_regclass('\"products_lastSyncedAt_idx\"') IS NULL")
    assert await db.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('products_name_idx')"
    )
    rows = await ledger(db)
    assert [(r["phase"], r["deferred_statements"]) for r in rows] == [("complete", 2)]
    done = await db.fetch("SELECT ordinal, line FROM watchdogd.rollback_ledger_statements ORDER BY 1")
    assert [tuple(r) for r in done] == [(1, 3), (2, 4)]
    assert (await SqlStep().run(target(pg_dsn, NO_TX_DOWN, ()))).status == "already_done"


async def test_invalid_index_left_by_a_failed_concurrent_build_is_dropped_on_resume(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE products SET sku = 'DUP'")
    down = """ALTER TABLE "products" ALTER COLUMN "price" DROP DEFAULT;
-- watchdogd:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS "products_name_idx" ON "products" ("name");
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "products_sku_key" ON "products" ("sku");
"""
    first = await SqlStep().run(target(pg_dsn, down, ()))
    assert first.status == "failed"
    assert "no-transaction phase: line 4 failed: SQLSTATE 23505" in first.detail
    assert (
        await db.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('products_sku_key')"
        )
        is False
    )
    assert [r["phase"] for r in await ledger(db)] == ["no_transaction_pending"]

    await db.execute("UPDATE products SET sku = id")
    second = await SqlStep().run(target(pg_dsn, down, ()))
    assert second.status == "done", second.detail
    outcome = second.data["migrations"][0]
    assert (outcome["statements_skipped"], outcome["statements_run"], outcome["invalid_indexes_dropped"]) == (
        1,
        1,
        1,
    )
    assert await db.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('products_sku_key')"
    )
    assert [r["phase"] for r in await ledger(db)] == ["complete"]


async def test_connection_lost_after_commit_is_settled_by_the_ledger(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)

    async def drop_after_commit(point: str, conn: asyncpg.Connection) -> None:
        if point == "committed":
            raise ConnectionResetError("connection reset by peer")

    result = await SqlStep(fault=drop_after_commit).run(target(pg_dsn))
    assert result.status == "done", result.detail
    assert len(await ledger(db)) == 1
    assert await db.fetchval("SELECT to_regclass('product_images') IS NULL")


async def test_connection_lost_before_commit_is_settled_by_the_ledger(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    before = await snapshot(db)

    async def kill_before_commit(point: str, conn: asyncpg.Connection) -> None:
        if point == "commit":
            await db.execute("SELECT pg_terminate_backend($1, 5000)", conn.get_server_pid())

    result = await SqlStep(fault=kill_before_commit).run(target(pg_dsn))
    assert result.status == "failed"
    assert "the ledger shows it did not commit" in result.detail
    assert await ledger(db) == []
    assert await snapshot(db) == before
    assert (await SqlStep().run(target(pg_dsn))).status == "done"


async def test_prisma_migration_is_marked_rolled_back(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(UP_MIGRATION)
    await db.execute("""
        CREATE TABLE "_prisma_migrations" (
            "id" VARCHAR(36) PRIMARY KEY, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ,
            "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ,
            "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
            "applied_steps_count" INTEGER NOT NULL DEFAULT 0);
        INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count)
        VALUES ('a', 'x', now(), '20251201_init', 1),
            ('b', 'y', now(), '20251227_add_product_import_system', 1);
    """)
    result = await SqlStep().run(target(pg_dsn, migrations_table={"kind": "prisma"}))
    assert result.status == "done", result.detail
    rows = await db.fetch(
        'SELECT migration_name, rolled_back_at IS NOT NULL AS rb FROM "_prisma_migrations" ORDER BY 1'
    )
    assert [tuple(r) for r in rows] == [("20251201_init", False), (MIGRATION_ID, True)]


async def test_golang_migrate_version_goes_back_to_the_previous_one(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    await db.execute("CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL)")
    await db.execute("INSERT INTO schema_migrations VALUES (20251227000000, false)")
    down = "-- watchdogd:previous-version 20251201000000\n" + SEED_ROLLBACK
    step_target = target(
        pg_dsn, down, migration_id="20251227000000", migrations_table={"kind": "golang-migrate"}
    )
    result = await SqlStep().run(step_target)
    assert result.status == "done", result.detail
    rows = await db.fetch("SELECT version, dirty FROM schema_migrations")
    assert [tuple(r) for r in rows] == [(20251201000000, False)]


async def test_alembic_version_goes_back_to_the_down_revision(pg_dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(UP_MIGRATION)
    await db.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    await db.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    without = await SqlStep().run(
        target(pg_dsn, migration_id="ae1027a6acf", migrations_table={"kind": "alembic"})
    )
    assert without.status == "failed" and "previous-version" in without.detail
    assert await db.fetchval("SELECT version_num FROM alembic_version") == "ae1027a6acf"
    down = "-- watchdogd:previous-version 1975ea83b712\n" + SEED_ROLLBACK
    result = await SqlStep().run(
        target(pg_dsn, down, migration_id="ae1027a6acf", migrations_table={"kind": "alembic"})
    )
    assert result.status == "done", result.detail
    assert await db.fetchval("SELECT version_num FROM alembic_version") == "1975ea83b712"


async def test_rehearsal_proves_the_rollback_and_leaves_the_database_unchanged(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    before = await snapshot(db)
    result = await SqlStep().rehearse(target(pg_dsn))
    assert result.status == "done", result.detail
    assert "rolled back" in result.detail
    assert await snapshot(db) == before
    assert await ledger(db) == []

    failing = await SqlStep().rehearse(target(pg_dsn, verify=("SELECT false",)))
    assert failing.status == "failed"
    assert "SELECT false" in failing.detail
    assert await snapshot(db) == before


async def test_dry_run_shows_the_exact_sql(pg_dsn: str) -> None:
    lines = await SqlStep().describe(target(pg_dsn, lock_timeout="2s", statement_timeout="30s"))
    text = "\n".join(lines)
    assert "SET LOCAL lock_timeout = '2000ms'" in lines
    assert "SET LOCAL statement_timeout = '30000ms'" in lines
    assert (
        "INSERT INTO watchdogd.rollback_ledger (service, migration_id, deployment_id, sql_sha256, phase, "
        "deferred_statements, completed_at) VALUES ('api', '20251227_add_product_import_system', 'dep-42'"
    ) in text
    assert "ON CONFLICT (service, migration_id) DO NOTHING" in text
    assert lines.index("BEGIN") < lines.index('DROP TABLE IF EXISTS "field_mapping_profiles" CASCADE')
    assert lines.index(SEED_VERIFY[0]) < lines.index("COMMIT")
    assert "pg_try_advisory_lock" in text


async def test_assessment_counts_the_rows_the_rollback_would_destroy(
    pg_dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(UP_MIGRATION)
    assessment = await SqlStep().assess(target(pg_dsn, destructive="approve"))
    counted = {(f.table, f.column): f.rows for f in assessment.findings}
    assert counted[("product_import_jobs", None)] == 1
    assert counted[("product_images", None)] == 0
    assert counted[("products", "externalId")] == 1
    assert counted[("products", "externalSku")] == 0
    assert assessment.destroys_data
    assert assessment.action == "approve"
    assert "drops table product_import_jobs holding 1 rows" in " ".join(str(f) for f in assessment.findings)
    refused = await SqlStep().assess(target(pg_dsn, destructive="refuse"))
    assert refused.action == "refuse"
    await db.execute(
        'DELETE FROM product_import_jobs; UPDATE products SET "externalId" = NULL, "importSource" = NULL'
    )
    assert (await SqlStep().assess(target(pg_dsn, destructive="approve"))).action == "run"
