"""The rollback ledger in the service's own database: which deployment rolled back which migration.

``watchdogd.rollback_ledger`` keeps one row per (service, migration): the
deployment whose rollback last undid it. A row of another deployment, complete,
means the migration was applied again since (the new deployment registered it)
and is rolled back again: in the rollback's own transaction the old row is
copied to ``watchdogd.rollback_ledger_history`` and replaced. The same
deployment finds its row and answers ``already_done``.

Least privilege: nothing here needs CREATE on the database. A DBA may
pre-create the ``watchdogd`` schema (and grant USAGE and CREATE on it to the
service's role), or the tables too (see docs/sql.md); each object is created
only when it does not exist yet.
"""

from __future__ import annotations

import zlib

import asyncpg

LEDGER = "watchdogd.rollback_ledger"
LEDGER_STATEMENTS = "watchdogd.rollback_ledger_statements"
LEDGER_HISTORY = "watchdogd.rollback_ledger_history"
DDL_LOCK = (0x77646F67, 1)
"""One fixed key serialises the ledger's creation between services (CREATE ... IF NOT EXISTS races)."""

SCHEMA_DDL = "CREATE SCHEMA IF NOT EXISTS watchdogd"
TABLE_DDL = {
    LEDGER: f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
    service text NOT NULL,
    migration_id text NOT NULL,
    deployment_id text NOT NULL,
    sql_sha256 text NOT NULL,
    rolled_back_at timestamptz NOT NULL DEFAULT now(),
    phase text NOT NULL CHECK (phase IN ('no_transaction_pending', 'complete')),
    deferred_statements integer NOT NULL DEFAULT 0,
    completed_at timestamptz,
    PRIMARY KEY (service, migration_id)
)""",
    LEDGER_STATEMENTS: f"""CREATE TABLE IF NOT EXISTS {LEDGER_STATEMENTS} (
    service text NOT NULL,
    migration_id text NOT NULL,
    ordinal integer NOT NULL,
    line integer NOT NULL,
    statement_sha256 text NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, migration_id, ordinal),
    FOREIGN KEY (service, migration_id) REFERENCES {LEDGER} ON DELETE CASCADE
)""",
    LEDGER_HISTORY: f"""CREATE TABLE IF NOT EXISTS {LEDGER_HISTORY} (
    service text NOT NULL,
    migration_id text NOT NULL,
    deployment_id text NOT NULL,
    sql_sha256 text NOT NULL,
    rolled_back_at timestamptz NOT NULL,
    phase text NOT NULL,
    deferred_statements integer NOT NULL,
    completed_at timestamptz,
    replaced_at timestamptz NOT NULL DEFAULT now(),
    replaced_by text NOT NULL
)""",
}
LEDGER_DDL = (SCHEMA_DDL, *TABLE_DDL.values())

ARCHIVE = (
    f"WITH old AS (DELETE FROM {LEDGER} WHERE service = $1 AND migration_id = $2 "
    "AND deployment_id <> $3 AND phase = 'complete' RETURNING *) "
    f"INSERT INTO {LEDGER_HISTORY} (service, migration_id, deployment_id, sql_sha256, rolled_back_at, "
    "phase, deferred_statements, completed_at, replaced_by) SELECT service, migration_id, deployment_id, "
    "sql_sha256, rolled_back_at, phase, deferred_statements, completed_at, $3 FROM old"
)
"""A complete row of another deployment moves to the history (its statements' rows go with it)."""
INSERT = (
    f"INSERT INTO {LEDGER} (service, migration_id, deployment_id, sql_sha256, phase, "
    "deferred_statements, completed_at) VALUES ($1, $2, $3, $4, $5, $6, "
    "CASE WHEN $5 = 'complete' THEN now() END) ON CONFLICT (service, migration_id) DO NOTHING RETURNING 1"
)


async def ensure(conn: asyncpg.Connection) -> None:
    """Creates what is missing of the ledger, under the DDL lock, in one transaction."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({DDL_LOCK[0]}, {DDL_LOCK[1]})")
        if await conn.fetchval("SELECT to_regnamespace('watchdogd')") is None:
            await conn.execute(SCHEMA_DDL)
        for name, ddl in TABLE_DDL.items():
            if await conn.fetchval("SELECT to_regclass($1)", name) is None:
                await conn.execute(ddl)


def advisory_key(service: str, database: str) -> tuple[int, int]:
    """The advisory lock's two int32s: CRC-32 of ``watchdogd:<service>`` and of the database name."""
    return _int32(zlib.crc32(f"watchdogd:{service}".encode())), _int32(zlib.crc32(database.encode()))


def _int32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value
