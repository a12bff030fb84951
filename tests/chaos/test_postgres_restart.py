"""PostgreSQL restarted while the sql step's transaction runs.

The restart cuts the step's connection before COMMIT, so the server rolls the
transaction back: nothing of the down SQL is applied, the ledger holds no row.
With retries left the step reconnects, takes its advisory lock again and runs
the whole transaction anew; with none it fails, and says why. Either way the
schema is whole and the ledger tells the truth.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from tests.chaos.conftest import Exporter, Watchdogd
from tests.chaos.helpers import register, rollbacks
from tests.testbed import postgres
from watchdogd.demo.seed000 import BASE_SCHEMA, MIGRATION_ID, SEED_ROLLBACK, UP_MIGRATION, snapshot

pytestmark = pytest.mark.integration

SLOW_DOWN = "SELECT pg_sleep(4);\n"
"""Put before the seed's rollback SQL: the transaction is surely running when the server restarts."""


async def _schema(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(BASE_SCHEMA)
        before = await snapshot(conn)
        await conn.execute(UP_MIGRATION)
        return {"before": before, "after": await snapshot(conn)}
    finally:
        await conn.close()


async def _now(dsn: str) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        schema = await snapshot(conn)
        try:
            rows = await conn.fetch("SELECT service, migration_id, phase FROM watchdogd.rollback_ledger")
        except asyncpg.UndefinedTableError:
            rows = []
        return schema, [tuple(r) for r in rows]
    finally:
        await conn.close()


async def _wait_running(dsn: str, timeout: float) -> None:
    """Until the step's transaction sits in its ``pg_sleep``."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(dsn)
    try:
        while time.monotonic() < deadline:
            running = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'watchdogd'"
                " AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
            )
            if running:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"the sql step did not start within {timeout}s")


@pytest.mark.parametrize("retries", [3, 0], ids=["retried", "no-retries"])
async def test_postgres_restarted_during_the_sql_step(
    watchdogd: Any, exporter: Any, pg_dsn: str, retries: int
) -> None:
    schemas = await _schema(pg_dsn)
    breaching: Exporter = exporter(lambda _: 10.0)
    wd: Watchdogd = watchdogd(
        f"""
defaults: {{interval: 500ms, window: 2m, grace: 0s}}
sources:
  app: {{type: scrape, url: "{breaching.url}", timeout: 1s}}
services:
  api:
    database: {{dsn: "{pg_dsn}", lock_timeout: 2s, lock_wait: 5s, destructive: auto,
                retries: {retries}, retry_backoff: 1s, allow_superuser: true,
                migrations: {{dir: migrations}}}}
    rollback: {{steps: [sql]}}
    rules:
      - {{name: errors, source: app, metric: errors, condition: "> 5", immediate: true, action: rollback}}
"""
    )
    folder = wd.workdir / "migrations" / MIGRATION_ID
    folder.mkdir(parents=True)
    (folder / "down.sql").write_text(SLOW_DOWN + SEED_ROLLBACK)
    wd.start()
    register(wd, "api", migrations=[{"id": MIGRATION_ID}])
    await _wait_running(pg_dsn, timeout=20)
    await postgres.restart_server()

    done = wd.wait_for(
        "the rollback ending",
        lambda: next((r for r in rollbacks(wd) if r["state"] in ("succeeded", "failed")), None),
        timeout=60,
    )
    schema, ledger = await _now(pg_dsn)
    if retries:
        assert done["state"] == "succeeded", done
        assert ledger == [("api", MIGRATION_ID, "complete")]
        assert schema == schemas["before"]
        assert '"event": "sql_reconnected"' in wd.log()
    else:
        assert done["state"] == "failed", done
        assert "connection lost before COMMIT" in done["error"] and "nothing applied" in done["error"]
        assert ledger == []  # the truth: nothing was rolled back
        assert schema == schemas["after"]  # whole, not half-applied
    assert wd.stop() == 0
