"""How long the sql step takes to roll back the seed's product-import migration.

Each run gets a fresh database on the local PostgreSQL (127.0.0.1:5432, as the
test bed runs it), applies the migration, then times ``SqlStep.run`` alone:
connecting, the ledger, the advisory lock, the transaction and the verify
queries. Creating the database and applying the migration are left out.

Run: ``.venv/bin/python bench/sql_step.py [--runs N]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg

# The migration and the database helpers are the integration tests' own.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.test_sql_step import target
from tests.testbed import postgres
from watchdogd.demo.seed000 import BASE_SCHEMA, UP_MIGRATION
from watchdogd.rollback.sql import SqlStep


async def one_run() -> float:
    name = await postgres.create_database("wdbench_")
    dsn = postgres.dsn_for(name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(BASE_SCHEMA)
            await conn.execute(UP_MIGRATION)
        finally:
            await conn.close()
        step = SqlStep()
        started = time.perf_counter()
        result = await step.run(target(dsn))
        elapsed = time.perf_counter() - started
        if result.status != "done":
            raise SystemExit(f"rollback failed: {result.detail}")
        return elapsed
    finally:
        await postgres.drop_database(name)


async def main(runs: int) -> None:
    times = [await one_run() for _ in range(runs)]
    print(
        f"sql step, seed 000 rollback: mean {statistics.mean(times) * 1000:.1f} ms "
        f"over {runs} runs (min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
