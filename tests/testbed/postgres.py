"""Throw-away PostgreSQL databases on the test bed's server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from pathlib import Path

import asyncpg

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
ADMIN_DATABASE = "postgres"
DB_PREFIX = "wdtest_"
CONNECT_TIMEOUT = 10.0


def dsn_for(database: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn_for(ADMIN_DATABASE), timeout=CONNECT_TIMEOUT)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise RuntimeError(
            f"PostgreSQL unreachable at {PG_HOST}:{PG_PORT} as {PG_USER} ({exc!r}); run scripts/testbed.sh"
        ) from exc


async def create_database(prefix: str = DB_PREFIX) -> str:
    """Create an empty database ``<prefix><random hex>``; returns its name."""
    name = f"{prefix}{secrets.token_hex(6)}"
    conn = await _admin()
    try:
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    """Drop ``name``, disconnecting whoever still uses it."""
    conn = await _admin()
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def database_exists(name: str) -> bool:
    conn = await _admin()
    try:
        found: int | None = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    return found == 1


async def restart_server(timeout: float = 60.0) -> None:
    """Restart the test bed's PostgreSQL (fast shutdown: open sessions are cut) and wait until it answers."""
    version = _cluster_version()
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(dsn_for(ADMIN_DATABASE), timeout=CONNECT_TIMEOUT)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _cluster_version() -> str:
    versions = sorted(Path("/etc/postgresql").iterdir(), key=lambda p: [int(x) for x in p.name.split(".")])
    if not versions:
        raise RuntimeError("no PostgreSQL cluster under /etc/postgresql; run scripts/testbed.sh")
    return versions[-1].name
