"""A sequential rule on a real Prometheus: the counters' growth between polls, resets counted from
zero, and an error step caught at the first poll that sees it.

Prometheus scrapes a local exporter every second; watchdogd's prometheus source queries the two
counters' series at each poll, as the daemon would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.testbed.exposition import serving
from tests.testbed.prometheus import PrometheusServer
from watchdogd.config.models import PrometheusSource, RuleConfig
from watchdogd.model import RuleState
from watchdogd.rules import compile_rule, evaluate, start_sequential
from watchdogd.sources.base import Measure
from watchdogd.sources.prometheus import PrometheusQuery

pytestmark = pytest.mark.integration

RULE = RuleConfig.model_validate(
    {
        "name": "errors",
        "source": "prom",
        "sequential": {
            "errors": 'req_total{code="500"}',
            "total": "req_total",
            "bad": "2%",
            "healthy": "0.5%",
            "dispersion": 1,
            "min_requests": 20,
        },
    }
)


class Counters:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.lock = threading.Lock()

    def text(self) -> str:
        with self.lock:
            return (
                "# TYPE req_total counter\n"
                f'req_total{{code="200"}} {self.ok}\nreq_total{{code="500"}} {self.failed}\n'
            )


@pytest.fixture
def exporter() -> Iterator[tuple[Counters, str]]:
    counters = Counters()
    with serving(counters.text) as address:
        yield counters, address


async def until_scraped(source: PrometheusQuery, counters: Counters, session_deadline: float) -> None:
    """Wait until Prometheus holds the exporter's current values."""
    want = float(counters.ok + counters.failed)
    while time.monotonic() < session_deadline:
        status, body = await source.post("sum(req_total)")
        if status == 200 and f'"{want:g}"' in body.decode():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Prometheus never scraped req_total = {want:g}")


async def test_counts_from_prometheus_catch_a_step_and_survive_a_reset(
    tmp_path: Path, exporter: tuple[Counters, str]
) -> None:
    counters, address = exporter
    server = PrometheusServer(tmp_path / "prom", [address], scrape_interval="1s", metrics_path="/metrics")
    server.start()
    try:
        server.wait_targets_up(timeout=60)
        config = PrometheusSource.model_validate({"type": "prometheus", "url": server.url})
        measure = Measure.of(RULE)
        assert measure.kind == "counts"
        rule = compile_rule(RULE, interval=1.0, window=3600)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            source = PrometheusQuery("prom", config, session)

            async def poll(ok: int, failed: int) -> Any:
                with counters.lock:
                    counters.ok += ok
                    counters.failed += failed
                await until_scraped(source, counters, deadline)
                return (await source.fetch([measure], time.time()))[measure]

            first = await poll(100, 0)
            assert first.counts is None and "first poll" in (first.reason or "")
            healthy = await poll(199, 1)
            assert healthy.counts == (1, 200)
            state = start_sequential(rule, time.time() - 1, [])
            state, _ = evaluate(rule, state, healthy, healthy.time)
            assert state.state is RuleState.OK
            # the app restarts: its counters start again from zero
            with counters.lock:
                counters.ok, counters.failed = 0, 0
            reset = await poll(80, 0)
            assert reset.counts == (0, 80), reset
            step = await poll(80, 20)
            assert step.counts == (20, 100), step
            state, transitions = evaluate(rule, state, step, step.time)
            assert state.state is RuleState.FIRING, state.reason
            assert "20 errors in 100 requests" in transitions[-1].reason
    finally:
        server.stop()
