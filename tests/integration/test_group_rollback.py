"""A service group rolled back together against the real Docker engine and PostgreSQL: two
containers and a database, one proposal, plans in the group's order, every member frozen after;
a failure stops the group and says which services are back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.testbed.containers import AppContainer, ContainerRegistry, free_port
from tests.testbed.images import APP_V1, APP_V2, IMAGE_REPOSITORY
from watchdogd.daemon import Daemon
from watchdogd.model import DeploymentState, RollbackRecord, RollbackState
from watchdogd.rollback.migrations import MigrationRequest
from watchdogd.store import open_store
from watchdogd.testing import RecordingReporter, config_of, wait_until
from watchdogd.watch.deployments import Registration

pytestmark = pytest.mark.integration

FAST = "{stop_timeout: 5s, healthy_timeout: 8s, settle: 300ms}"
DOWN = "DROP TABLE product_images;"
VERIFY = "SELECT to_regclass('public.product_images') IS NULL"


def _config(web: str, worker: str, dsn: str) -> str:
    return f"""
defaults: {{interval: 1s, window: 1h, grace: 0s, freeze_after_rollback: 1h}}
services:
  web:
    container: {web}
    images: [{IMAGE_REPOSITORY}]
    rollback: {{steps: [container], container: {FAST}}}
  worker:
    container: {worker}
    images: [{IMAGE_REPOSITORY}]
    rollback: {{steps: [container], container: {FAST}}}
  db:
    database: {{dsn: "{dsn}", sql_from_api: true, allow_superuser: true}}
    rollback: {{steps: [sql]}}
groups:
  shop: {{services: [db, web, worker], order: [web, worker, db]}}
"""


def _run_app(client: Any, registry: ContainerRegistry, image: str, name: str) -> Any:
    port = free_port()
    container = registry.track(
        client.containers.run(
            image,
            detach=True,
            name=name,
            network_mode="host",
            environment={"PORT": str(port)},
            labels=registry.labels,
        )
    )
    AppContainer(container, port, image).wait_answering(20)
    return container


def _image_of(client: Any, name: str) -> str:
    return str(client.api.inspect_container(name)["Config"]["Image"])


async def _table_exists(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT to_regclass('public.product_images') IS NOT NULL"))
    finally:
        await conn.close()


async def _setup(
    docker_client: Any, registry: ContainerRegistry, dsn: str, tmp_path: Path
) -> tuple[Daemon, RecordingReporter, str, str]:
    web, worker = registry.name("web"), registry.name("worker")
    _run_app(docker_client, registry, APP_V2, web)
    _run_app(docker_client, registry, APP_V2, worker)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE product_images (id int PRIMARY KEY, url text)")
        await conn.execute("INSERT INTO product_images VALUES (1, 'a.png')")
    finally:
        await conn.close()
    daemon = await Daemon.open(
        config_of(_config(web, worker, dsn)),
        store=await open_store(f"sqlite:///{tmp_path / 'state.db'}"),
        docker=docker_client,
        polling=False,
    )
    return daemon, RecordingReporter().attach(daemon.report), web, worker


async def _final(daemon: Daemon, rollback_id: str) -> RollbackRecord:
    async def ended() -> RollbackRecord | None:
        record = await daemon.store.get(rollback_id)
        return record if record is not None and record.final else None

    found: RollbackRecord = await wait_until(ended, within=90, what="the group's rollback to end")
    return found


async def _register(daemon: Daemon, worker_previous: str = APP_V1) -> dict[str, str]:
    ids = {}
    for service, previous in (("web", APP_V1), ("worker", worker_previous)):
        deployment, _ = await daemon.deployments.register(Registration(service, APP_V2, previous), "ci")
        ids[service] = deployment.id
    migration = MigrationRequest("20251227_add_product_images", DOWN, (VERIFY,))
    deployment, _ = await daemon.deployments.register(Registration("db", wanted=(migration,)), "ci")
    ids["db"] = deployment.id
    return ids


async def test_two_containers_and_a_database_are_rolled_back_together_in_order(
    docker_client: Any,
    app_images: dict[str, str],
    container_registry: ContainerRegistry,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    daemon, recorded, web, worker = await _setup(docker_client, container_registry, pg_dsn, tmp_path)
    try:
        ids = await _register(daemon)
        # the operator names the worker's deployment: the rollback is the group's
        record = await daemon.operators.manual_rollback(ids["worker"], "alice", "checkout broken")
        assert [s.name for s in record.steps] == ["web/container", "worker/container", "db/sql"]
        # dropping a table that holds rows needs an approval: the whole group waits for one decision
        assert record.state is RollbackState.AWAITING_APPROVAL
        await daemon.operators.approve(record.id, "alice")
        async with asyncio.timeout(120):
            done = await _final(daemon, record.id)
        assert done.state is RollbackState.SUCCEEDED, done.error
        assert _image_of(docker_client, web) == APP_V1
        assert _image_of(docker_client, worker) == APP_V1
        assert not await _table_exists(pg_dsn)
        started = [s.started_at or 0.0 for s in done.steps]
        assert started == sorted(started)  # member after member, in the group's order
        for service, deployment_id in ids.items():
            found = await daemon.store.deployment(deployment_id)
            assert found is not None and found.state is DeploymentState.ROLLED_BACK, service
        await _all_frozen(daemon)
        [succeeded] = recorded.of("rollback_succeeded")
        assert "back: web, worker, db" in succeeded.summary
    finally:
        await daemon.close(10)


async def test_a_failed_member_stops_the_group_and_the_report_says_which_services_are_back(
    docker_client: Any,
    app_images: dict[str, str],
    container_registry: ContainerRegistry,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    daemon, recorded, web, worker = await _setup(docker_client, container_registry, pg_dsn, tmp_path)
    try:
        # an image the allow-list names but the engine does not have, and pulls are off: its step fails
        ids = await _register(daemon, worker_previous=f"{IMAGE_REPOSITORY}:gone-{web[-6:]}")
        record = await daemon.operators.manual_rollback(ids["web"], "alice", "checkout broken")
        await daemon.operators.approve(record.id, "alice")
        async with asyncio.timeout(120):
            done = await _final(daemon, record.id)
        assert done.state is RollbackState.FAILED
        assert [(s.name, s.state) for s in done.steps] == [
            ("web/container", "done"),
            ("worker/container", "failed"),
            ("db/sql", "pending"),
        ]
        assert _image_of(docker_client, web) == APP_V1
        assert _image_of(docker_client, worker) == APP_V2  # left as it was, still serving
        assert docker_client.api.inspect_container(worker)["State"]["Running"]
        assert await _table_exists(pg_dsn)  # the group stopped before the database
        states = {s: (await daemon.store.deployment(i)).state for s, i in ids.items()}  # type: ignore[union-attr]
        assert states == {
            "web": DeploymentState.ROLLED_BACK,
            "worker": DeploymentState.ROLLBACK_FAILED,
            "db": DeploymentState.ROLLBACK_FAILED,
        }
        [failed] = recorded.of("rollback_failed")
        assert "back: web" in failed.summary
        assert "not back: worker (step container failed" in failed.summary
        assert "db (not started: the group stopped at worker)" in failed.summary
        await _all_frozen(daemon)
    finally:
        await daemon.close(10)


async def _all_frozen(daemon: Daemon) -> None:
    """Every member frozen: the freezes are written just after the rollback's outcome."""

    async def frozen() -> bool:
        return sorted(f.service for f in await daemon.store.freezes()) == ["db", "web", "worker"]

    await wait_until(frozen, within=10, what="every member frozen")
