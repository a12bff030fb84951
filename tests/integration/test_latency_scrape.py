"""A latency rule on a real scrape of a local exporter: a slower p99 after the deploy is caught with
its evidence in words; the same latency is not.

The exporter serves a Prometheus histogram (``http_request_duration_seconds_bucket{le=...}``,
cumulative, with ``_sum`` and ``_count`` as client libraries write them, and two routes whose
buckets are summed by ``le``) over HTTP on 127.0.0.1; watchdogd's scrape source polls it (HTTP,
the exposition parser, the series store, the per-poll growth of each bucket), and the rule is
evaluated in the engine on each poll. Poll times are stamped by the test, 0.2 s apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from watchdogd.config.models import RuleConfig, ScrapeSource
from watchdogd.model import RuleState, Sample
from watchdogd.rules import compile_rule, evaluate, start_latency
from watchdogd.sources.base import Measure
from watchdogd.sources.scrape import MetricsScrape

pytestmark = pytest.mark.integration

INTERVAL = 0.2
DEPLOY = 1_800_000_000.0
HISTORY = 300  # polls before the deploy: a minute at 0.2 s
BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Exporter:
    def __init__(self) -> None:
        self.counts = {route: [0] * (len(BOUNDS) + 1) for route in ("/a", "/b")}
        self.sum = 0.0

    def observe(self, route: str, seconds: float) -> None:
        i = next((i for i, le in enumerate(BOUNDS) if seconds <= le), len(BOUNDS))
        self.counts[route][i] += 1
        self.sum += seconds

    def text(self) -> str:
        lines = ["# TYPE http_request_duration_seconds histogram"]
        for route, counts in self.counts.items():
            running = 0
            for le, count in zip([*map(str, BOUNDS), "+Inf"], counts, strict=True):
                running += count
                lines.append(f'http_request_duration_seconds_bucket{{le="{le}",route="{route}"}} {running}')
            lines.append(f'http_request_duration_seconds_count{{route="{route}"}} {running}')
            lines.append(f'http_request_duration_seconds_sum{{route="{route}"}} {self.sum}')
        return "\n".join(lines) + "\n"


LATENCY = RuleConfig.model_validate(
    {
        "name": "slow",
        "source": "app",
        "latency": {
            "histogram": "http_request_duration_seconds",
            "quantile": 0.99,
            "slower_by": "20%",
            "confidence": "99%",
            "min_observations": 200,
            "history": "1m",
        },
    }
)


async def watch(url: str, exporter: Exporter, slower: float, polls: int) -> tuple[float | None, str]:
    """``HISTORY`` polls of 20 requests each, the deploy, ``polls`` more ``slower`` times as slow."""
    rng = random.Random(7)
    config = ScrapeSource.model_validate({"type": "scrape", "url": url})
    measure = Measure.of(LATENCY)
    rule = compile_rule(LATENCY, interval=INTERVAL, window=3600)
    history: list[Sample] = []
    fired = None
    async with aiohttp.ClientSession() as session:
        scrape = MetricsScrape("app", config, session)

        def requests(scale: float) -> None:
            for n in range(20):
                exporter.observe("/a" if n % 2 else "/b", scale * rng.lognormvariate(math.log(0.1), 0.5))

        for i in range(-HISTORY, 0):
            requests(1.0)
            history.append((await scrape.fetch([measure], DEPLOY + i * INTERVAL))[measure])
        state = start_latency(rule, DEPLOY, history)
        for i in range(polls):
            requests(slower)
            at = DEPLOY + (i + 1) * INTERVAL
            state, _ = evaluate(rule, state, (await scrape.fetch([measure], at))[measure], at)
            if state.state is RuleState.FIRING and fired is None:
                fired = at - DEPLOY
    return fired, state.reason


async def test_a_slower_p99_after_the_deploy_fires_with_the_evidence(
    served: Callable[[Exporter], Awaitable[str]],
) -> None:
    exporter = Exporter()
    fired, reason = await watch(await served(exporter), exporter, slower=1.6, polls=60)
    assert fired is not None, reason
    assert fired <= 2.0 + 1e-6, (fired, reason)  # the first look: 200 requests, 2 s of them
    assert reason.startswith("p99 ") and " after vs " in reason and " before, +" in reason
    assert "vs 5,980 requests, U-test p = " in reason  # a minute of history: 299 polls counted


async def test_the_same_latency_does_not_fire(served: Callable[[Exporter], Awaitable[str]]) -> None:
    exporter = Exporter()
    fired, reason = await watch(await served(exporter), exporter, slower=1.0, polls=600)
    assert fired is None, reason
