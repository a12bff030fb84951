"""POST /v1/services/{service}/backups, a deployment naming its backup, and its restore held for approval."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.testbed import postgres
from watchdogd.api import create_app
from watchdogd.auth import Tokens
from watchdogd.daemon import Daemon
from watchdogd.demo import seed000
from watchdogd.model import DeploymentState, RollbackState
from watchdogd.testing import FakeClock, FakeSources, NoDocker, config_of, memory_store, wait_until

pytestmark = pytest.mark.integration

TOKENS = "tokens:\n" + "".join(
    f"  - {{name: {who}, role: {role}, token: {who}-token-0123456789}}\n"
    for who, role in (("ci", "deployer"), ("alice", "operator"), ("bob", "viewer"))
)


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-token-0123456789"}


@pytest.fixture
async def client(tmp_path: Path, pg_dsn: str) -> AsyncIterator[tuple[Daemon, TestClient[Any, Any]]]:
    text = f"""
defaults: {{interval: 1s, grace: 0s, window: 1h}}
backups: {{dir: {tmp_path / "backups"}}}
services:
  api:
    database: {{dsn: "{pg_dsn}", allow_superuser: true}}
    rollback: {{steps: [restore]}}
"""
    clock = FakeClock()
    daemon = await Daemon.open(
        config_of(text), store=await memory_store(clock), clock=clock, make_source=FakeSources(),
        polling=False, docker=NoDocker(), tick=0.02,
    )  # fmt: skip
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    test_client: TestClient[Any, Any] = TestClient(TestServer(create_app(daemon, Tokens.load(tokens))))
    await test_client.start_server()
    yield daemon, test_client
    await test_client.close()
    await daemon.close(2)


async def test_backup_deploy_and_an_approved_restore(
    client: tuple[Daemon, TestClient[Any, Any]], pg_dsn: str
) -> None:
    daemon, http = client
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(seed000.BASE_SCHEMA)
    answer = await http.post("/v1/services/api/backups", headers=auth("bob"))
    assert answer.status == 403  # a viewer cannot
    answer = await http.post("/v1/services/api/backups", headers=auth("ci"))
    assert answer.status == 201, await answer.text()
    backup = await answer.json()
    assert backup["tables"]["public.products"] == 2
    listed = await (await http.get("/v1/services/api/backups", headers=auth("bob"))).json()
    assert [b["backup_id"] for b in listed["items"]] == [backup["backup_id"]]
    bad = await http.post(
        "/v1/deployments",
        json={"service": "api", "backup_id": "api-20200101T000000Z-abcdef"},
        headers=auth("ci"),
    )
    assert bad.status == 422 and (await bad.json())["error"]["code"] == "unknown_backup"
    answer = await http.post(
        "/v1/deployments", json={"service": "api", "backup_id": backup["backup_id"]}, headers=auth("ci")
    )
    assert answer.status == 201, await answer.text()
    deployment = await answer.json()
    assert deployment["backup_id"] == backup["backup_id"]
    await conn.execute(seed000.UP_MIGRATION)
    await conn.execute("INSERT INTO companies VALUES ('c9', 'late')")
    await conn.close()
    answer = await http.post(
        f"/v1/deployments/{deployment['id']}/rollback", json={"reason": "bad"}, headers=auth("alice")
    )
    rollback = await answer.json()
    assert rollback["state"] == "awaiting_approval"  # a restore destroys what came after: approval first
    record = await daemon.store.get(rollback["id"])
    assert record is not None and record.state is RollbackState.AWAITING_APPROVAL
    answer = await http.post(f"/v1/rollbacks/{rollback['id']}/approve", headers=auth("alice"))
    assert answer.status == 200

    async def rolled_back() -> bool:
        found = await daemon.store.deployment(deployment["id"])
        return found is not None and found.state in (
            DeploymentState.ROLLED_BACK,
            DeploymentState.ROLLBACK_FAILED,
        )

    await wait_until(rolled_back, what="the restore", within=60)
    done = await daemon.store.get(rollback["id"])
    assert done is not None and done.state is RollbackState.SUCCEEDED, done
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM companies") == 1
        assert await conn.fetchval("SELECT to_regclass('product_images')") is None
    finally:
        await conn.close()
    admin = await asyncpg.connect(postgres.dsn_for("postgres"))
    try:
        for row in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", pg_dsn.rsplit("/", 1)[1] + "_replaced_%"
        ):
            await admin.execute(f'DROP DATABASE "{row["datname"]}" WITH (FORCE)')
    finally:
        await admin.close()
