"""``GET /v1/events`` on a live ``watchdogd run``: a deploy's rule changes arrive as they happen."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import VIEWER_TOKEN, Watchdogd
from tests.e2e.test_daemon import Story, config_for
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import AppBehaviour

pytestmark = pytest.mark.integration


async def next_event(response: aiohttp.ClientResponse) -> dict[str, Any]:
    fields: dict[str, str] = {}
    while True:
        raw = await response.content.readline()
        if not raw:
            raise AssertionError("the stream ended")
        line = raw.decode().rstrip("\n")
        if line and not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif not line and "data" in fields:
            return {"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])}


async def test_a_live_daemon_streams_rule_states_during_a_deploy(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn, mode="dry-run", grace="1s"))
    wd.start()
    url = wd.url + "/v1/events"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        async with client.get(url) as anonymous:
            assert anonymous.status == 401
        headers = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
        async with client.get(url, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
            deployment = await asyncio.to_thread(story.register, wd)
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(45):
                while not any(
                    e["event"] == "rule_state"
                    and e["data"]["rule"] == "error-rate"
                    and e["data"]["to"] == "firing"
                    for e in events
                ):
                    events.append(await next_event(response))
            # an open stream does not hold up a clean stop
            started = time.monotonic()
            assert await asyncio.to_thread(wd.stop) == 0
            assert time.monotonic() - started < 15
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    kinds = [e["event"] for e in events]
    assert "deployment" in kinds
    changes = [
        (e["data"]["from"], e["data"]["to"])
        for e in events
        if e["event"] == "rule_state" and e["data"]["rule"] == "error-rate"
    ]
    assert ("pending", "firing") in changes, changes
    firing = next(e for e in events if e["event"] == "rule_state" and e["data"]["to"] == "firing")
    assert firing["data"]["deployment_id"] == deployment["id"]
    assert firing["data"]["service"] == "api"
