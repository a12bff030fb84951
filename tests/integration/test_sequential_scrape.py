"""A sequential rule on a real scrape of a local exporter: it catches an error step long before a
threshold rule can, and stays quiet on healthy traffic that is bursty.

The exporter serves ``req_total{code=...}`` counters over HTTP on 127.0.0.1; watchdogd's own
scrape source polls it (HTTP, the exposition parser, the series store) and both rules are
evaluated on the same polls. Poll times are stamped by the test, 0.2 s apart, as the
scheduler stamps them; the traffic per poll is what 100 requests/s would bring.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from bench.traffic import Traffic
from watchdogd.config.models import RuleConfig, ScrapeSource
from watchdogd.model import RuleState, Sample
from watchdogd.rules import compile_rule, evaluate, start, start_sequential
from watchdogd.sources.base import Measure
from watchdogd.sources.scrape import MetricsScrape

pytestmark = pytest.mark.integration

INTERVAL = 0.2
DEPLOY = 1_800_000_000.0
HISTORY = 300  # polls before the deploy: one minute at 0.2 s


class Exporter:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    def add(self, errors: int, requests: int) -> None:
        self.failed += errors
        self.ok += requests - errors

    def text(self) -> str:
        lines = ["# TYPE req_total counter", f'req_total{{code="200"}} {self.ok}']
        if self.failed:  # the 500 series appears with the first error, as client libraries do
            lines.append(f'req_total{{code="500"}} {self.failed}')
        return "\n".join(lines) + "\n"


SEQUENTIAL = RuleConfig.model_validate(
    {
        "name": "errors-sequential",
        "source": "app",
        "sequential": {
            "errors": 'req_total{code="500"}',
            "total": "req_total",
            "bad": "2%",
            "history": "1m",
            "min_requests": 20,
        },
    }
)
THRESHOLD = RuleConfig.model_validate(
    {
        "name": "errors-threshold",
        "source": "app",
        "ratio": {"numerator": 'req_total{code="500"}', "denominator": "req_total", "over": "2s"},
        "condition": "> 0.05",
        "for": "2s",
    }
)


async def watch(
    url: str, exporter: Exporter, traffic: Callable[[int], tuple[int, int]], polls: int
) -> tuple[dict[str, float | None], str]:
    """Scrape ``HISTORY`` healthy polls, deploy, then ``polls`` more: when each rule fired, and why."""
    config = ScrapeSource.model_validate({"type": "scrape", "url": url})
    counts = Measure.of(SEQUENTIAL)
    ratio = Measure.of(THRESHOLD)
    sequential = compile_rule(SEQUENTIAL, interval=INTERVAL, window=3600)
    threshold = compile_rule(THRESHOLD)
    fired: dict[str, float | None] = {"sequential": None, "threshold": None}
    history: list[Sample] = []
    async with aiohttp.ClientSession() as session:
        scrape = MetricsScrape("app", config, session)
        for i in range(-HISTORY, 0):
            exporter.add(*traffic(i))
            at = DEPLOY + i * INTERVAL
            history.append((await scrape.fetch([counts, ratio], at))[counts])
        seq_state = start_sequential(sequential, DEPLOY, history)
        thr_state = start(threshold, DEPLOY)
        for i in range(polls):
            exporter.add(*traffic(i))
            at = DEPLOY + (i + 1) * INTERVAL
            samples = await scrape.fetch([counts, ratio], at)
            seq_state, _ = evaluate(sequential, seq_state, samples[counts], at)
            thr_state, _ = evaluate(threshold, thr_state, scrape.since(ratio, samples[ratio], DEPLOY), at)
            if seq_state.state is RuleState.FIRING and fired["sequential"] is None:
                fired["sequential"] = at - DEPLOY
            if thr_state.state is RuleState.FIRING and fired["threshold"] is None:
                fired["threshold"] = at - DEPLOY
    return fired, seq_state.reason


async def test_an_error_step_fires_the_sequential_rule_well_before_the_threshold_rule(
    served: Callable[[Exporter], Awaitable[str]],
) -> None:
    exporter = Exporter()
    url = await served(exporter)
    rng = random.Random(24)

    def traffic(i: int) -> tuple[int, int]:  # 0.5% until the deploy, 20% after
        rate = 0.005 if i < 0 else 0.2
        return sum(rng.random() < rate for _ in range(20)), 20

    fired, reason = await watch(url, exporter, traffic, polls=40)
    assert fired["sequential"] is not None and fired["threshold"] is not None, fired
    assert fired["sequential"] <= 1.0 + 1e-6, fired  # 100 requests after the step: 20 errors
    # the threshold rule's own limit: the 2 s ratio crosses 5% after 0.3 s, then holds for 2 s
    assert fired["threshold"] >= 2.2, fired
    assert " errors in " in reason and "probability" in reason


async def test_healthy_bursty_traffic_does_not_fire_it(served: Callable[[Exporter], Awaitable[str]]) -> None:
    """Ten minutes at 0.2 s of clumped errors, a drifting rate and bursts four times as high."""
    exporter = Exporter()
    url = await served(exporter)
    source = Traffic(random.Random(5), low=100, high=100, interval=INTERVAL, bursts_per_hour=30)

    def traffic(i: int) -> tuple[int, int]:
        return source.poll((i + HISTORY) * INTERVAL)

    fired, reason = await watch(url, exporter, traffic, polls=3000)
    assert fired["sequential"] is None, reason
