"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest
from aiohttp import web

from tests.conftest import Handler


class Exposition(Protocol):
    """An exporter a test drives: its ``/metrics`` text as of now."""

    def text(self) -> str: ...


@pytest.fixture
def served(fake_server: Callable[[Handler], Awaitable[str]]) -> Callable[[Exposition], Awaitable[str]]:
    """``await served(exporter)``: the exporter's ``/metrics`` on 127.0.0.1, its URL returned."""

    async def serve(exporter: Exposition) -> str:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=exporter.text(), content_type="text/plain")

        return f"{await fake_server(metrics)}/metrics"

    return serve
