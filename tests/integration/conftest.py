"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
from aiohttp import web

from tests.testbed.containers import free_port


class Exposition(Protocol):
    """An exporter a test drives: its ``/metrics`` text as of now."""

    def text(self) -> str: ...


@pytest.fixture
async def served() -> AsyncIterator[Callable[[Exposition], Awaitable[str]]]:
    """``await served(exporter)``: the exporter's ``/metrics`` on 127.0.0.1, its URL returned."""
    runners: list[web.AppRunner] = []

    async def serve(exporter: Exposition) -> str:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=exporter.text(), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/metrics"

    yield serve
    for runner in runners:
        await runner.cleanup()
