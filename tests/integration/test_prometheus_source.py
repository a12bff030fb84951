"""The prometheus source against a local server that records what it was asked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.testbed.containers import free_port
from watchdogd.config.models import PrometheusSource
from watchdogd.sources.prometheus import PrometheusQuery

pytestmark = pytest.mark.integration


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    asked: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]},
            }
        )

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
