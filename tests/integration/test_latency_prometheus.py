"""A latency rule on a real Prometheus: the histogram's bucket series queried at each poll, their
growth summed by ``le``, and a slower p99 after the deploy caught with its evidence.

Prometheus scrapes a local exporter every second; watchdogd's prometheus source queries the
``_bucket`` series at each poll, as the daemon would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.testbed.exposition import serving
from tests.testbed.prometheus import PrometheusServer
from watchdogd.config.models import PrometheusSource, RuleConfig
from watchdogd.model import RuleState, Sample
from watchdogd.rules import compile_rule, evaluate, start_latency
from watchdogd.sources.base import Measure
from watchdogd.sources.prometheus import PrometheusQuery

pytestmark = pytest.mark.integration

RULE = RuleConfig.model_validate(
    {
        "name": "slow",
        "source": "prom",
        "latency": {"histogram": 'lat_seconds{job!=""}', "min_observations": 200, "history": "10m"},
    }
)
BOUNDS = ("0.1", "0.25", "0.5", "1", "+Inf")


class Histogram:
    def __init__(self) -> None:
        self.cumulative = [0, 0, 0, 0, 0]
        self.lock = threading.Lock()

    def add(self, per_bucket: list[int]) -> None:
        with self.lock:
            running = 0
            for i, count in enumerate(per_bucket):
                running += count
                self.cumulative[i] += running

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE lat_seconds histogram"]
            lines += [
                f'lat_seconds_bucket{{le="{le}"}} {v}' for le, v in zip(BOUNDS, self.cumulative, strict=True)
            ]
            lines += [f"lat_seconds_count {self.cumulative[-1]}", "lat_seconds_sum 0"]
            return "\n".join(lines) + "\n"


@pytest.fixture
def exporter() -> Iterator[tuple[Histogram, str]]:
    histogram = Histogram()
    with serving(histogram.text) as address:
        yield histogram, address


async def until_scraped(source: PrometheusQuery, histogram: Histogram, deadline: float) -> None:
    want = float(histogram.cumulative[-1])
    while time.monotonic() < deadline:
        status, body = await source.post('sum(lat_seconds_bucket{le="+Inf"})')
        if status == 200 and f'"{want:g}"' in body.decode():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Prometheus never scraped lat_seconds_count = {want:g}")


async def test_a_slower_p99_from_prometheus_fires(tmp_path: Path, exporter: tuple[Histogram, str]) -> None:
    histogram, address = exporter
    server = PrometheusServer(tmp_path / "prom", [address], scrape_interval="1s", metrics_path="/metrics")
    server.start()
    try:
        server.wait_targets_up(timeout=60)
        config = PrometheusSource.model_validate({"type": "prometheus", "url": server.url})
        measure = Measure.of(RULE)
        assert measure.kind == "buckets"
        rule = compile_rule(RULE, interval=1.0, window=3600)
        deadline = time.monotonic() + 90
        async with aiohttp.ClientSession() as session:
            source = PrometheusQuery("prom", config, session)

            async def poll(per_bucket: list[int]) -> Sample:
                histogram.add(per_bucket)
                await until_scraped(source, histogram, deadline)
                return (await source.fetch([measure], time.time()))[measure]

            first = await poll([400, 90, 8, 2, 0])
            assert first.buckets is None and "first poll" in (first.reason or "")
            history = [await poll([400, 90, 8, 2, 0]) for _ in range(3)]
            assert history[0].buckets == ((0.1, 0.25, 0.5, 1.0), (400.0, 90.0, 8.0, 2.0, 0.0))
            deploy = time.time()
            state = start_latency(rule, deploy, history)
            assert state.baseline is not None, state.reason
            slower = await poll([200, 200, 70, 25, 5])
            state, transitions = evaluate(rule, state, slower, max(slower.time, deploy))
            assert state.state is RuleState.FIRING, state.reason
            assert "500 vs 1,500 requests, U-test p = " in transitions[-1].reason
    finally:
        server.stop()
