"""``watchdogd check --live`` says which privileges the sql step lacks, each with the GRANT that fixes it.

Against the real PostgreSQL of the test bed: a least-privilege role missing one grant at a time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from watchdogd.cli import main
from watchdogd.config import load_config
from watchdogd.preflight import check_databases

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def role(db: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role that owns the app's tables, with USAGE and CREATE on a pre-created ``watchdogd`` schema
    and no CREATE on the database: everything the docs ask for."""
    name = f"wd_grants_{uuid.uuid4().hex[:10]}"
    await db.execute(f"CREATE ROLE {name} LOGIN")
    database = await db.fetchval("SELECT current_database()")
    await db.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC')
    await db.execute("CREATE TABLE widgets (id int PRIMARY KEY); CREATE TABLE gadgets (id int PRIMARY KEY)")
    await db.execute(f"ALTER TABLE widgets OWNER TO {name}; ALTER TABLE gadgets OWNER TO {name}")
    await db.execute("CREATE SCHEMA watchdogd")
    await db.execute(f"GRANT USAGE, CREATE ON SCHEMA watchdogd TO {name}")
    await db.execute(
        "CREATE TABLE flyway_schema_history (installed_rank int PRIMARY KEY, version varchar(50), "
        "description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, "
        "checksum int, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), "
        "execution_time int NOT NULL, success boolean NOT NULL)"
    )
    await db.execute(f"GRANT SELECT, DELETE ON flyway_schema_history TO {name}")
    yield name
    await db.execute(f"REASSIGN OWNED BY {name} TO postgres")
    await db.execute(f"DROP OWNED BY {name}")
    await db.execute(f"DROP ROLE {name}")


def config_file(tmp_path: Path, dsn: str, migrations: Path | None = None) -> Path:
    folder = f', migrations: {{dir: "{migrations}"}}' if migrations else ""
    path = tmp_path / "watchdogd.yaml"
    path.write_text(
        f"""
services:
  api:
    container: api
    database: {{dsn: "{dsn}", migrations_table: {{kind: flyway}}{folder}}}
"""
    )
    return path


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}@", 1)


async def lines(path: Path) -> tuple[bool, tuple[str, ...]]:
    [seen] = await check_databases(load_config(path))
    return seen.refused, seen.missing


async def test_a_role_with_every_grant_the_docs_give_passes(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, role: str
) -> None:
    assert await lines(config_file(tmp_path, as_role(pg_dsn, role))) == (False, ())


async def test_a_missing_grant_on_the_migration_table_is_named_with_the_grant_that_fixes_it(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, role: str
) -> None:
    await db.execute(f"REVOKE DELETE ON flyway_schema_history FROM {role}")
    path = config_file(tmp_path, as_role(pg_dsn, role))
    refused, missing = await lines(path)
    assert refused
    fix = f'GRANT DELETE ON "public"."flyway_schema_history" TO "{role}";'
    assert missing == (f'missing DELETE on "public"."flyway_schema_history" (the migration table): {fix}',)
    await db.execute(fix)  # the printed statement, run as printed, is the fix
    assert await lines(path) == (False, ())


async def test_a_missing_create_on_the_ledger_schema_is_named(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, role: str
) -> None:
    await db.execute(f"REVOKE CREATE ON SCHEMA watchdogd FROM {role}")
    refused, missing = await lines(config_file(tmp_path, as_role(pg_dsn, role)))
    assert refused
    assert len(missing) == 1
    assert "missing CREATE on schema watchdogd" in missing[0]
    assert f'GRANT CREATE ON SCHEMA watchdogd TO "{role}";' in missing[0]


async def test_no_ledger_schema_and_no_create_on_the_database_says_what_the_dba_runs(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, role: str
) -> None:
    await db.execute("DROP SCHEMA watchdogd")
    refused, missing = await lines(config_file(tmp_path, as_role(pg_dsn, role)))
    assert refused and len(missing) == 1
    assert "missing CREATE on database" in missing[0]
    assert f'CREATE SCHEMA watchdogd; GRANT USAGE, CREATE ON SCHEMA watchdogd TO "{role}";' in missing[0]


async def test_tables_the_down_sql_touches_are_checked_from_the_migrations_directory(
    tmp_path: Path, pg_dsn: str, db: asyncpg.Connection, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await db.execute("CREATE TABLE audit (id int); ALTER TABLE gadgets OWNER TO postgres")
    folder = tmp_path / "migrations" / "20250102000000_gadgets"
    folder.mkdir(parents=True)
    (folder / "down.sql").write_text(
        "DELETE FROM audit WHERE id > 1;\n\nDROP TABLE gadgets;\nDROP TABLE later;\n"
    )
    path = config_file(tmp_path, as_role(pg_dsn, role), tmp_path / "migrations")
    refused, missing = await lines(path)
    assert refused
    assert missing == (
        'missing DELETE on "audit" (20250102000000_gadgets/down.sql line 1): GRANT DELETE ON "audit" TO '
        f'"{role}";',
        'not the owner of relation "gadgets" (owned by postgres; 20250102000000_gadgets/down.sql line 3 '
        f'drops or alters it): ALTER TABLE "gadgets" OWNER TO "{role}"; (or GRANT "postgres" TO "{role}";)',
    )  # "later" does not exist now: its migration creates it
    assert await asyncio.to_thread(main, ["check", "--config", str(path), "--quiet", "--live"]) == 1
    out, err = capsys.readouterr()
    assert "MISSING api:" in out and "lacks 2 privilege(s) for the sql step" in out
    assert f'GRANT DELETE ON "audit" TO "{role}";' in out
    assert "the sql step cannot run for: api" in err
