"""The prometheus source against a local server that records what it was asked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.testbed.containers import free_port
from watchdogd.config.models import PrometheusSource
from watchdogd.sources.base import Measure, Poller
from watchdogd.sources.prometheus import PrometheusQuery
from watchdogd.telemetry import Metrics

pytestmark = pytest.mark.integration


UNCLOSED = "1:16: parse error: unclosed left parenthesis"
VECTOR_OF_ONE = {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]}
ANSWERS: dict[str, tuple[int, dict[str, object]]] = {
    "up": (200, {"status": "success", "data": VECTOR_OF_ONE}),
    "sum(rate(x[1m])": (400, {"status": "error", "errorType": "bad_data", "error": UNCLOSED}),
    "nothing_matches": (200, {"status": "success", "data": {"resultType": "vector", "result": []}}),
}


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    asked: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        asked.append(form)
        status, body = ANSWERS[form["query"]]
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/api/v1/query", answer)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", asked
    await runner.cleanup()


async def test_queries_are_sent_at_the_wall_clock_time_not_the_steady_clock(
    recorded: tuple[str, list[dict[str, str]]],
) -> None:
    url, asked = recorded
    config = PrometheusSource.model_validate({"type": "prometheus", "url": url})
    async with aiohttp.ClientSession() as session:
        source = PrometheusQuery("prom", config, session)
        steady = time.time() - 3600.0  # watchdogd's clock an hour behind the wall clock
        sample = await source.query("up", steady)
    assert sample.value == 1.0 and sample.time == steady  # stamped on watchdogd's clock
    assert abs(float(asked[0]["time"]) - time.time()) < 5.0  # asked at the server's (wall) time


@pytest.mark.parametrize(
    ("query", "reason", "label"),
    [
        (
            "sum(rate(x[1m])",
            "query refused: bad_data: 1:16: parse error: unclosed left parenthesis",
            "bad_data",
        ),
        ("nothing_matches", "empty result: no series matched the query", "empty"),
    ],
)
async def test_a_query_the_server_refuses_or_answers_empty_is_a_counted_error(
    recorded: tuple[str, list[dict[str, str]]], query: str, reason: str, label: str
) -> None:
    url, _ = recorded
    config = PrometheusSource.model_validate({"type": "prometheus", "url": url})
    metrics = Metrics(CollectorRegistry())
    async with aiohttp.ClientSession() as session:
        poller = Poller(PrometheusQuery("prom", config, session), 5.0, metrics)
        measure = Measure("query", query)
        sample = (await poller.poll([measure], time.time()))[measure]
    assert (sample.value, sample.reason) == (None, reason)
    errors = metrics.registry.get_sample_value(
        "watchdogd_source_errors_total", {"source": "prom", "reason": label}
    )
    assert errors == 1
    assert metrics.registry.get_sample_value("watchdogd_source_up", {"source": "prom"}) == 0


async def test_an_unreachable_server_is_counted_as_unreachable() -> None:
    config = PrometheusSource.model_validate({"type": "prometheus", "url": f"http://127.0.0.1:{free_port()}"})
    metrics = Metrics(CollectorRegistry())
    async with aiohttp.ClientSession() as session:
        poller = Poller(PrometheusQuery("prom", config, session), 5.0, metrics)
        measure = Measure("query", "up")
        sample = (await poller.poll([measure], time.time()))[measure]
    assert sample.value is None and sample.error == "unreachable"
    labels = {"source": "prom", "reason": "unreachable"}
    assert metrics.registry.get_sample_value("watchdogd_source_errors_total", labels) == 1


async def test_a_redirect_is_not_followed_with_the_sources_headers(
    recorded: tuple[str, list[dict[str, str]]],
) -> None:
    elsewhere, asked = recorded  # another origin: it must never see the query nor its headers

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{elsewhere}/api/v1/query")

    app = web.Application()
    app.router.add_post("/api/v1/query", redirect)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = PrometheusSource.model_validate(
            {"type": "prometheus", "url": f"http://127.0.0.1:{port}", "headers": {"X-Scope-OrgID": "tenant"}}
        )
        metrics = Metrics(CollectorRegistry())
        async with aiohttp.ClientSession() as session:
            poller = Poller(PrometheusQuery("prom", config, session), 5.0, metrics)
            measure = Measure("query", "up")
            sample = (await poller.poll([measure], time.time()))[measure]
    finally:
        await runner.cleanup()
    assert asked == []
    assert sample.value is None
    assert "redirect" in (sample.reason or "") and elsewhere in (sample.reason or "")
