"""Fixtures over the real servers of the test bed (see scripts/testbed.sh).

A test that needs a server errors out with a message naming scripts/testbed.sh
when that server is unreachable; nothing here skips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.testbed import postgres, redisdb
from tests.testbed.containers import AppContainer, ContainerRegistry, free_port
from tests.testbed.images import ensure_app_images
from tests.testbed.prometheus import AlertmanagerServer, PrometheusServer

AppFactory = Callable[..., AppContainer]
PgDatabaseFactory = Callable[[], Awaitable[str]]
PrometheusFactory = Callable[..., PrometheusServer]
AlertmanagerFactory = Callable[..., AlertmanagerServer]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SETUP_HINT = "start the test bed with scripts/testbed.sh"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A ``docker.DockerClient`` for the local engine; fails if it does not answer."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        pytest.fail(f"Docker engine unreachable ({exc!r}); {_SETUP_HINT}", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def app_images(docker_client: Any) -> dict[str, str]:
    """``{"v1": "watchdogd-test/app:v1", "v2": "watchdogd-test/app:v2"}``, built if stale."""
    return ensure_app_images(docker_client)


@pytest.fixture
def container_registry(docker_client: Any) -> Iterator[ContainerRegistry]:
    """Tracks containers of one test (by object, label or name prefix); removes them after."""
    registry = ContainerRegistry(docker_client)
    yield registry
    registry.cleanup()


@pytest.fixture
def app_container(app_images: dict[str, str], container_registry: ContainerRegistry) -> AppFactory:
    """Factory: ``app_container("v1" | "v2" | ref, behaviour=None, *, name=None, port=None,
    wait=True, timeout=20.0, labels=None) -> AppContainer`` on host network, a free port."""
    return container_registry.run_app


@pytest.fixture
async def pg_database() -> AsyncIterator[PgDatabaseFactory]:
    """Factory: ``await pg_database()`` creates a fresh ``wdtest_<hex>`` DB, returns its DSN.
    Every database it made is dropped (WITH (FORCE)) after the test."""
    created: list[str] = []

    async def make() -> str:
        try:
            name = await postgres.create_database()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        created.append(name)
        return postgres.dsn_for(name)

    yield make
    for name in reversed(created):
        await postgres.drop_database(name)


@pytest.fixture
async def pg_dsn(pg_database: PgDatabaseFactory) -> str:
    """DSN of a fresh, empty database for this test (dropped afterwards)."""
    return await pg_database()


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Factory: ``prometheus_server(targets, **PrometheusServer kwargs)`` starts a real
    Prometheus (1 s scrape/eval by default) on a free port, ready; stopped by PID after.
    ``targets`` holds ``"127.0.0.1:port"`` strings or :class:`AppContainer` objects."""
    servers: list[PrometheusServer] = []

    def make(targets: Sequence[str | AppContainer] = (), **kwargs: Any) -> PrometheusServer:
        addresses = [t.target if isinstance(t, AppContainer) else t for t in targets]
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", addresses, **kwargs)
        servers.append(server)
        try:
            server.start()
        except RuntimeError as exc:
            pytest.fail(f"{exc}; {_SETUP_HINT}", pytrace=False)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def alertmanager_server(tmp_path: Path) -> Iterator[AlertmanagerFactory]:
    """Factory: ``alertmanager_server(webhook_url=None, config=None)`` starts a real
    Alertmanager (no clustering) on a free port, ready; stopped by PID after."""
    servers: list[AlertmanagerServer] = []

    def make(**kwargs: Any) -> AlertmanagerServer:
        server = AlertmanagerServer(tmp_path / f"alertmanager-{len(servers)}", **kwargs)
        servers.append(server)
        try:
            server.start()
        except RuntimeError as exc:
            pytest.fail(f"{exc}; {_SETUP_HINT}", pytrace=False)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://127.0.0.1:6379/0``."""
    return redisdb.REDIS_URL


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio Redis client on the test bed's server, pinged; closed after the test."""
    client = redisdb.client(redis_url)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"Redis unreachable at {redis_url} ({exc!r}); {_SETUP_HINT}", pytrace=False)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique key prefix (``wdtest:<hex>:``); every key under it is deleted after the test."""
    prefix = redisdb.new_prefix()
    client = redisdb.client(redis_url)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"Redis unreachable at {redis_url} ({exc!r}); {_SETUP_HINT}", pytrace=False)
    try:
        yield prefix
        await redisdb.delete_prefix(client, prefix)
    finally:
        await client.aclose()


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Starts a local aiohttp server answering every path with ``handler``; returns its URL.

    For faults real servers cannot be made to produce (hangs, garbage), and for
    receivers (webhooks) a test inspects.
    """
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.5)  # a handler that hangs must not hold the teardown
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
