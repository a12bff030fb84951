"""The http, redis, postgres and prometheus sources against their real servers.

Fault cases (a hanging server, 500 answers, garbage bodies) use a small local
aiohttp server, in addition to the real ones, to inject what they cannot do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.testbed.containers import free_port
from tests.testbed.images import AppBehaviour
from watchdogd.config.models import HttpSource, PostgresSource, PrometheusSource, RedisSource
from watchdogd.config.types import SecretUrl
from watchdogd.sources.base import Measure, Poller, Source
from watchdogd.sources.http import HttpProbe
from watchdogd.sources.postgres import PostgresProbe
from watchdogd.sources.prometheus import PrometheusQuery
from watchdogd.sources.redis import RedisQueue
from watchdogd.telemetry import Metrics, source_errors

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def errors(metrics: Metrics, source: str) -> float:
    value = source_errors(metrics.registry, source) or None
    return value or 0.0


async def poll_one(source: Source, measure: Measure, metrics: Metrics, timeout: float = 2.0) -> Any:
    poller = Poller(source, timeout, metrics)
    return (await poller.poll([measure], time.time()))[measure]


# --- http ------------------------------------------------------------------------


async def test_http_probe_sees_healthy_and_unhealthy_app(
    app_container: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    good = app_container("v1")
    bad = app_container("v1", AppBehaviour(unhealthy=True))
    for app, up, status in ((good, 1.0, 200.0), (bad, 0.0, 500.0)):
        probe = HttpProbe("health", HttpSource(type="http", url=SecretUrl(app.health_url)), session)
        fields = [Measure("field", "up"), Measure("field", "status"), Measure("field", "latency_seconds")]
        samples = await Poller(probe, 2.0, metrics).poll(fields, time.time())
        assert samples[fields[0]].value == up
        assert samples[fields[1]].value == status
        latency = samples[fields[2]].value
        assert latency is not None and 0 < latency < 2
    # a probe that answers "down" is a value, not a failed source
    assert errors(metrics, "health") == 0


async def test_http_probe_down_and_body_match(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/health"
    probe = HttpProbe("h", HttpSource(type="http", url=SecretUrl(closed)), session)
    sample = await poll_one(probe, Measure("field", "up"), metrics)
    assert sample.value == 0.0 and "cannot reach" in sample.reason

    async def degraded(_: web.Request) -> web.Response:
        return web.Response(text='{"status": "degraded"}')

    url = await fake_server(degraded)
    cfg = HttpSource(type="http", url=SecretUrl(url + "/health"), body_match='"status": "ok"')
    sample = await poll_one(HttpProbe("h2", cfg, session), Measure("field", "up"), metrics)
    assert sample.value == 0.0 and "does not match" in sample.reason


async def test_http_probe_hanging_server_times_out(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    url = await fake_server(hang)
    cfg = HttpSource(type="http", url=SecretUrl(url), timeout="300ms")
    started = time.perf_counter()
    sample = await poll_one(HttpProbe("slow", cfg, session), Measure("field", "up"), metrics)
    assert time.perf_counter() - started < 2
    assert sample.value == 0.0 and "no answer within 0.3s" in sample.reason


# --- redis -----------------------------------------------------------------------


async def test_redis_depth_of_list_zset_stream_and_sum(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str, metrics: Metrics
) -> None:
    wait, active, delayed, stream = (redis_prefix + k for k in ("wait", "active", "delayed", "events"))
    await redis_client.rpush(wait, *range(120))
    await redis_client.rpush(active, *range(3))
    await redis_client.zadd(delayed, {f"job{i}": i for i in range(7)})
    await redis_client.xadd(stream, {"a": "1"})
    await redis_client.xadd(stream, {"a": "2"})

    async def depth(key: str | tuple[str, ...]) -> Any:
        source = RedisQueue("queue", RedisSource(type="redis", url=SecretUrl(redis_url), key=key))
        try:
            return await poll_one(source, Measure("depth"), metrics)
        finally:
            await source.close()

    assert (await depth(wait)).value == 120
    assert (await depth((wait, active))).value == 123
    assert (await depth(delayed)).value == 7
    assert (await depth(stream)).value == 2
    assert (await depth(redis_prefix + "missing")).value == 0
    await redis_client.set(redis_prefix + "string", "x")
    wrong = await depth(redis_prefix + "string")
    assert wrong.value is None and "not a list" in wrong.reason
    assert errors(metrics, "queue") == 1


async def test_redis_down_is_no_data_and_counted(metrics: Metrics) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    source = RedisQueue("queue", RedisSource(type="redis", url=SecretUrl(url), key="q", timeout="1s"))
    try:
        with structlog.testing.capture_logs() as logs:
            first = await poll_one(source, Measure("depth"), metrics)
            poller = Poller(source, 2.0, metrics)
            for _ in range(3):
                await poller.poll([Measure("depth")], time.time())
    finally:
        await source.close()
    assert first.value is None and "ConnectionError" in first.reason
    assert errors(metrics, "queue") == 4
    # logged once when it went bad, not once per poll
    assert sum(1 for e in logs if e["event"] == "source_failing") == 2  # two pollers, one each


# --- postgres --------------------------------------------------------------------


async def test_postgres_query_and_connectivity(pg_dsn: str, metrics: Metrics) -> None:
    cfg = PostgresSource(type="postgres", dsn=SecretUrl(pg_dsn), timeout="2s")
    probe = PostgresProbe("db", cfg)
    try:
        connected = Measure("field", "connected")
        count = Measure("query", "SELECT count(*) FROM generate_series(1, 42)")
        broken = Measure("query", "SELECT nope FROM nowhere")
        text = Measure("query", "SELECT 'abc'")
        samples = await Poller(probe, 5.0, metrics).poll([connected, count, broken, text], time.time())
        assert samples[connected].value == 1.0
        assert samples[count].value == 42.0
        assert samples[broken].value is None and "UndefinedTable" in samples[broken].reason
        assert samples[text].value is None and "not a number" in samples[text].reason
        # read-only: a probe cannot write
        write = Measure("query", "CREATE TABLE t AS SELECT 1 AS x")
        sample = (await Poller(probe, 5.0, metrics).poll([write], time.time()))[write]
        assert sample.value is None and "ReadOnly" in sample.reason
        slow = Measure("query", "SELECT pg_sleep(5)")
        started = time.perf_counter()
        sample = (await Poller(probe, 5.0, metrics).poll([slow], time.time()))[slow]
        assert sample.value is None and time.perf_counter() - started < 4
    finally:
        await probe.close()


async def test_postgres_down_is_disconnected(metrics: Metrics) -> None:
    dsn = f"postgresql://postgres:s3cret-pw@127.0.0.1:{free_port()}/test"
    probe = PostgresProbe("db", PostgresSource(type="postgres", dsn=SecretUrl(dsn), timeout="1s"))
    try:
        with structlog.testing.capture_logs() as logs:
            connected = await poll_one(probe, Measure("field", "connected"), metrics)
            query = await poll_one(probe, Measure("query", "SELECT 1"), metrics)
    finally:
        await probe.close()
    assert connected.value == 0.0
    assert query.value is None and "cannot connect" in query.reason
    assert "s3cret-pw" not in query.reason and "s3cret-pw" not in repr(logs)


# --- prometheus ------------------------------------------------------------------


async def test_prometheus_query_on_real_server(
    app_container: Any, prometheus_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    app = app_container("v2", AppBehaviour(error_ratio=0.25, rps=50))
    prom = prometheus_server([app])
    source = PrometheusQuery("prom", PrometheusSource(type="prometheus", url=SecretUrl(prom.url)), session)
    ratio = Measure(
        "query", 'sum(rate(http_requests_total{code="500"}[5s])) / sum(rate(http_requests_total[5s]))'
    )
    empty = Measure("query", 'up{job="does-not-exist"}')
    scalar = Measure("query", "scalar(vector(3))")
    several = Measure("query", "http_requests_total")
    bad = Measure("query", "sum(")
    value = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        samples = await Poller(source, 5.0, metrics).poll([ratio, empty, scalar, several, bad], time.time())
        value = samples[ratio].value
        if value is not None:
            break
        await asyncio.sleep(0.5)
    assert value is not None and abs(value - 0.25) < 0.03
    assert (
        samples[empty].value is None and samples[empty].reason == "empty result: no series matched the query"
    )
    assert samples[scalar].value == 3.0
    # two series (code 200 and 500): max by default
    assert samples[several].value is not None and samples[several].value > 0
    assert samples[bad].value is None and "bad_data" in samples[bad].reason
    # an empty result and a refused query are errors: a rule on them cannot see
    for reason in ("empty", "bad_data"):
        labels = {"source": "prom", "reason": reason}
        assert (metrics.registry.get_sample_value("watchdogd_source_errors_total", labels) or 0) >= 1


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b"oops", "not JSON"),
        (200, b"[1, 2]", "not a JSON object"),
        (503, b'{"status": "error", "errorType": "unavailable", "error": "down"}', "unavailable"),
        (
            200,
            b'{"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}}',
            "not a number",
        ),
        (
            200,
            b'{"status": "success", "data": {"resultType": "vector", "result": [{"value": 5}]}}',
            "malformed",
        ),
    ],
)
async def test_prometheus_garbage_is_no_data_and_counted(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics, status: int, body: bytes, reason: str
) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    url = await fake_server(answer)
    source = PrometheusQuery("prom", PrometheusSource(type="prometheus", url=SecretUrl(url)), session)
    sample = await poll_one(source, Measure("query", "up"), metrics)
    assert sample.value is None and reason in sample.reason
    assert errors(metrics, "prom") == 1


@pytest.mark.parametrize(
    ("values", "aggregation", "expected"),
    [
        (["1", "NaN", "3"], "max", 3.0),
        (["1", "2", "3"], "sum", 6.0),
        (["1", "2", "3"], "avg", 2.0),
        (["1", "2", "3"], "min", 1.0),
        (["NaN"], "max", None),
        (["+Inf"], "max", float("inf")),
        (["1", "2"], "single", None),
    ],
)
async def test_prometheus_series_reduce(
    fake_server: Any,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    values: list[str],
    aggregation: Any,
    expected: float | None,
) -> None:
    result = [{"metric": {"i": str(i)}, "value": [1, v]} for i, v in enumerate(values)]

    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    url = await fake_server(answer)
    cfg = PrometheusSource(type="prometheus", url=SecretUrl(url), aggregation=aggregation)
    sample = await poll_one(PrometheusQuery("prom", cfg, session), Measure("query", "x"), metrics)
    assert sample.value == expected


async def test_prometheus_sends_auth(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}})

    url = await fake_server(answer)
    cfg = PrometheusSource.model_validate(
        {"type": "prometheus", "url": url, "bearer_token": "tok-123", "headers": {"X-Scope-OrgID": "t1"}}
    )
    sample = await poll_one(PrometheusQuery("prom", cfg, session), Measure("query", "x"), metrics)
    assert sample.value == 7.0 and seen == ["Bearer tok-123"]
    assert "tok-123" not in repr(cfg)
