"""Sources over a Swarm service's tasks: every replica's metrics merged, every replica's logs read."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.test_swarm_rollback import REPLICAS, Service, docker, port_prefix
from tests.testbed.containers import http_get, parse_metrics
from watchdogd.clock import now
from watchdogd.config.models import DockerLogsSource, ScrapeSource
from watchdogd.selector import parse_selector
from watchdogd.sources import build_source
from watchdogd.sources.base import Measure
from watchdogd.sources.swarm import TASK_LABEL, SwarmScrape

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(docker_client: Any, app_images: dict[str, str]) -> Iterator[Service]:
    if docker_client.info()["Swarm"]["LocalNodeState"] != "active":
        raise RuntimeError("the test bed's swarm is not active: run scripts/testbed.sh")
    service = Service(f"wdtest-{secrets.token_hex(4)}", port_prefix())
    try:
        service.create(
            "--env", "LOG_LINE=hello from slot-{{.Task.Slot}}", "--env", "LOG_EVERY=0.2", "--env", "RPS=20"
        )  # fmt: skip
        yield service
    finally:
        with contextlib.suppress(RuntimeError):
            docker("service", "rm", service.name)


async def test_scrape_merges_every_task_as_one_service(fleet: Service) -> None:
    config = ScrapeSource.model_validate(
        {
            "type": "scrape",
            "url": f"http://127.0.0.1:{fleet.prefix}{{slot}}/cgi-bin/metrics",
            "swarm_service": fleet.name,
        }
    )
    total = Measure("metric", "http_requests_total")
    async with aiohttp.ClientSession() as session:
        source = build_source("fleet", config, session)
        assert isinstance(source, SwarmScrape)
        before = 0.0
        for slot in range(1, REPLICAS + 1):
            status, body = http_get(f"http://127.0.0.1:{fleet.prefix}{slot}/cgi-bin/metrics")
            assert status == 200
            before += sum(v for k, v in parse_metrics(body).items() if k.startswith("http_requests_total"))
        # a task busy for a moment is left out of that one poll (by design): poll until all answer
        deadline = time.monotonic() + 20
        while True:
            answers = await source.fetch([total], now())
            series = source.store.matching(parse_selector("http_requests_total"))
            tasks = {dict(labels)[TASK_LABEL] for _, labels in series}
            if len(tasks) == REPLICAS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert len(tasks) == REPLICAS, series.keys()
    value = answers[total].value
    assert value is not None and value >= before > 0


async def test_docker_logs_of_a_swarm_service_read_every_task(fleet: Service) -> None:
    config = DockerLogsSource.model_validate({"type": "docker_logs", "swarm_service": fleet.name})
    measures = [Measure("count", f"hello from slot-{slot}$", over=60.0) for slot in range(1, REPLICAS + 1)]
    async with aiohttp.ClientSession() as session:
        source = build_source("fleet-logs", config, session)
        try:
            deadline = time.monotonic() + 30
            while True:
                answers = await source.fetch(measures, now())
                counts = [answers[m].value for m in measures]
                if all(c is not None and c >= 2 for c in counts):
                    break
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.3)
        finally:
            await source.close()
