"""The test bed's fixtures against the real servers."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from docker.errors import NotFound
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AlertmanagerFactory, AppFactory, PgDatabaseFactory, PrometheusFactory
from tests.testbed import postgres, redisdb
from tests.testbed.containers import ContainerRegistry, free_port, http_get
from tests.testbed.images import APP_V1, PRISMA_LOG_LINE, AppBehaviour

pytestmark = pytest.mark.integration

BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
OK = 'http_requests_total{code="200"}'
ERR = 'http_requests_total{code="500"}'


def _bucket(le: str) -> str:
    return f'http_request_duration_seconds_bucket{{le="{le}"}}'


def test_v1_serves_metrics_and_health(app_container: AppFactory) -> None:
    app = app_container("v1")
    assert app.image == APP_V1
    assert app.health() == (200, "ok")

    with urllib.request.urlopen(app.metrics_url, timeout=5) as resp:
        content_type = resp.headers["Content-Type"]
        text = resp.read().decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == {
        "http_requests": "counter",
        "http_request_duration_seconds": "histogram",
        "app_info": "gauge",
        "import_queue_depth": "gauge",
        "process_start_time_seconds": "gauge",
    }

    m = app.metrics()
    assert m['app_info{version="v1"}'] == 1
    assert m["import_queue_depth"] == 0
    counts = [m[_bucket(le)] for le in BUCKETS]
    assert counts == sorted(counts)
    assert m[_bucket("+Inf")] == m["http_request_duration_seconds_count"] == m[OK] + m[ERR]
    assert "app v1 starting" in app.logs()


def test_unhealthy_by_env_and_by_flag_file(app_container: AppFactory) -> None:
    sick = app_container("v1", AppBehaviour(unhealthy=True))
    assert sick.health()[0] == 500

    app = app_container("v1")
    assert app.health()[0] == 200
    assert app.container.exec_run(["touch", "/run/app/unhealthy"]).exit_code == 0
    assert app.health()[0] == 500


def test_v2_error_ratio_and_latency_follow_env(app_container: AppFactory) -> None:
    app = app_container(
        "v2",
        AppBehaviour(
            error_ratio=0.25,
            rps=100,
            latency_slow_fraction=0.1,
            latency_slow_seconds=2,
            queue_depth=7,
        ),
    )
    first = app.metrics()
    time.sleep(3)
    second = app.metrics()
    assert second['app_info{version="v2"}'] == 1
    assert second["import_queue_depth"] == 7

    d_total = (second[OK] + second[ERR]) - (first[OK] + first[ERR])
    d_err = second[ERR] - first[ERR]
    assert d_total >= 200, (first, second)
    assert d_err / d_total == pytest.approx(0.25, abs=0.02)

    d_count = second["http_request_duration_seconds_count"] - first["http_request_duration_seconds_count"]
    d_fast = second[_bucket("1")] - first[_bucket("1")]
    d_slow_bucket = second[_bucket("2.5")] - first[_bucket("2.5")]
    assert d_count == d_total
    assert d_fast / d_count == pytest.approx(0.9, abs=0.02)
    assert d_slow_bucket == d_count


def test_v2_logs_its_error_line(app_container: AppFactory) -> None:
    app = app_container("v2", AppBehaviour(log_every=0.2))
    logs = app.wait_logs("PrismaClientKnownRequestError", timeout=10)
    assert PRISMA_LOG_LINE in logs.splitlines()


def test_crash_after_exits_non_zero(app_container: AppFactory) -> None:
    app = app_container("v1", AppBehaviour(crash_after=1), wait=False)
    assert app.wait_exit(timeout=15) == 1
    assert app.status() == "exited"
    assert "crashing after 1s" in app.logs()


def test_stop_is_graceful_and_quick(app_container: AppFactory) -> None:
    app = app_container("v1")
    started = time.monotonic()
    app.container.stop(timeout=10)
    assert time.monotonic() - started < 5
    assert app.exit_code() == 0


def test_registry_removes_tracked_and_prefixed_containers(
    docker_client: Any, app_images: dict[str, str]
) -> None:
    registry = ContainerRegistry(docker_client)
    tracked = registry.run_app("v1", wait=False)
    # As if the code under test had created it: only the name ties it to the registry.
    other = docker_client.containers.run(
        app_images["v1"],
        detach=True,
        network_mode="host",
        name=registry.name("recreated"),
        environment={"PORT": str(free_port())},
    )
    registry.cleanup()
    for container_id in (tracked.id, other.id):
        with pytest.raises(NotFound):
            docker_client.containers.get(container_id)


async def test_pg_database_is_fresh_and_isolated(pg_dsn: str, pg_database: PgDatabaseFactory) -> None:
    assert pg_dsn.startswith("postgresql://postgres@127.0.0.1:5432/wdtest_")
    conn = await asyncpg.connect(pg_dsn, timeout=10)
    try:
        await conn.execute("CREATE TABLE deploys (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO deploys VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM deploys") == 1
    finally:
        await conn.close()

    other_dsn = await pg_database()
    assert other_dsn != pg_dsn
    conn = await asyncpg.connect(other_dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.deploys')") is None
    finally:
        await conn.close()


async def test_pg_drop_database_removes_it() -> None:
    name = await postgres.create_database()
    assert await postgres.database_exists(name)
    conn = await asyncpg.connect(postgres.dsn_for(name), timeout=10)
    try:
        # An open connection must not stop the drop.
        await postgres.drop_database(name)
    finally:
        await conn.close()
    assert not await postgres.database_exists(name)


async def test_redis_prefix_scopes_keys(redis_prefix: str, redis_client: aioredis.Redis) -> None:
    assert redis_prefix.startswith("wdtest:")
    outside = redisdb.new_prefix() + "keep"
    await redis_client.set(redis_prefix + "a", "1")
    await redis_client.set(redis_prefix + "b", "2")
    await redis_client.set(outside, "3")
    try:
        assert await redis_client.get(redis_prefix + "a") == b"1"
        assert await redisdb.delete_prefix(redis_client, redis_prefix) == 2
        assert await redis_client.exists(redis_prefix + "a", redis_prefix + "b") == 0
        assert await redis_client.get(outside) == b"3"
    finally:
        await redis_client.delete(outside)


def test_prometheus_scrapes_the_app(app_container: AppFactory, prometheus_server: PrometheusFactory) -> None:
    app = app_container("v2", AppBehaviour(error_ratio=0.25))
    prom = prometheus_server([app])
    # Prometheus 2.42 applies new targets on a 5 s tick: the first scrape takes 5-10 s.
    targets = prom.wait_targets_up(timeout=15)
    assert [t["labels"]["instance"] for t in targets] == [app.target]

    assert prom.wait_for("sum(rate(http_requests_total[5s])) > 0", timeout=15)
    # rate() divides by the whole window, so it reaches RPS once 5 s of samples exist.
    prom.wait_for(
        "sum(rate(http_requests_total[5s]))",
        timeout=10,
        predicate=lambda r: bool(r) and abs(float(r[0]["value"][1]) - 50) < 10,
    )

    ratio = prom.query('sum(rate(http_requests_total{code="500"}[5s])) / sum(rate(http_requests_total[5s]))')
    assert float(ratio[0]["value"][1]) == pytest.approx(0.25, abs=0.03)
    assert prom.query('app_info{version="v2"}')


async def test_prometheus_async_query(
    app_container: AppFactory, prometheus_server: PrometheusFactory
) -> None:
    # Prometheus may start first, on a port picked ahead for the app.
    port = free_port()
    prom = prometheus_server([f"127.0.0.1:{port}"])
    app = app_container("v1", port=port)
    prom.wait_for("up == 1", timeout=15)
    result = await prom.aquery('app_info{version="v1"}')
    assert result[0]["metric"]["instance"] == app.target


def test_alertmanager_starts(alertmanager_server: AlertmanagerFactory) -> None:
    am = alertmanager_server()
    assert http_get(am.url + "/-/ready")[0] == 200
    assert am.alerts() == []
    assert am.pid is not None


def test_prometheus_rules_reach_alertmanager(
    alertmanager_server: AlertmanagerFactory, prometheus_server: PrometheusFactory
) -> None:
    am = alertmanager_server()
    rule = {"alert": "AlwaysFiring", "expr": "vector(1)", "labels": {"severity": "page"}}
    prometheus_server([], rule_groups=[{"name": "testbed", "rules": [rule]}], alertmanagers=[am.address])
    alerts = am.wait_alerts(timeout=20)
    assert [a["labels"]["alertname"] for a in alerts] == ["AlwaysFiring"]
