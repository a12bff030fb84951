"""``POST /v1/alertmanager`` on a real local server: payloads bounded in bytes, the daemon unharmed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.testbed.containers import free_port
from watchdogd.api import create_app
from watchdogd.auth import Principal, Tokens
from watchdogd.config.loader import load_config_text
from watchdogd.daemon import Daemon
from watchdogd.sources.alertmanager import MAX_ALERT_BYTES, MAX_PAYLOAD_BYTES
from watchdogd.testing import FakeClock, NoDocker, memory_store

pytestmark = pytest.mark.integration

TOKEN = "deployer-token-0123456789"
CONFIG = """
state: {url: 'sqlite:///:memory:'}
sources:
  am: {type: alertmanager}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - {name: paged, source: am, alerts: 'alertname="HighErrorRate"', condition: ">= 1", action: rollback}
"""


def alert(fp: str, **annotations: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "HighErrorRate", "service": "api"},
        "annotations": annotations,
        "startsAt": "2026-01-05T02:00:00Z",
        "fingerprint": fp,
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "wd", "groupKey": "g", "alerts": list(alerts)}


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Daemon]]:
    clock = FakeClock()
    daemon = await Daemon.open(
        load_config_text(CONFIG, "watchdogd.yaml"),
        store=await memory_store(clock),
        clock=clock,
        polling=False,
        docker=NoDocker(),
    )
    tokens = Tokens({hashlib.sha256(TOKEN.encode()).hexdigest(): Principal("ci", "deployer")})
    runner = web.AppRunner(create_app(daemon, tokens))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1/alertmanager", daemon
    finally:
        await runner.cleanup()
        await daemon.close(1)


async def post(url: str, data: Any, chunked: bool = False) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = data if isinstance(data, bytes) else json.dumps(data).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=chunks() if chunked else body, headers=headers) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_bound_is_413_and_the_next_one_is_taken(
    api: tuple[str, Daemon], chunked: bool
) -> None:
    url, _ = api
    many = [alert(f"a{n}", summary="x" * 900) for n in range(MAX_PAYLOAD_BYTES // 900 + 10)]
    status, answer = await post(url, payload(*many), chunked=chunked)
    assert status == 413
    assert answer["error"]["code"] == "too_large"
    assert f"{MAX_PAYLOAD_BYTES} bytes" in answer["error"]["message"]

    status, answer = await post(url, payload(alert("ok")))
    assert (status, answer["alerts"], answer["sources"]) == (200, 1, 1)


async def test_an_alert_over_its_byte_bound_is_422_naming_it(api: tuple[str, Daemon]) -> None:
    url, _ = api
    # each value is within the per-value limit; together they are far past the alert's bound
    big = {f"note{n}": "€" * 5000 for n in range(8)}  # 3 bytes each: 120 kB
    status, answer = await post(url, payload(alert("small"), alert("big", **big)))
    assert status == 422
    assert answer["error"]["code"] == "invalid"
    message = answer["error"]["message"]
    assert message.startswith("alerts.1: ")
    assert f"over {MAX_ALERT_BYTES}" in message

    status, answer = await post(url, payload(alert("small")))
    assert (status, answer["alerts"]) == (200, 1)


async def test_an_alert_just_under_its_bound_is_taken(api: tuple[str, Daemon]) -> None:
    url, _ = api
    status, answer = await post(url, payload(alert("near", note="x" * (MAX_ALERT_BYTES // 2))))
    assert status == 200, answer
