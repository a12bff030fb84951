"""Scheduled polling: one job per source, slow sources alone, subscribers fed from one poll."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from watchdogd.config.models import RuleConfig
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.rules import compile_rule, evaluate, start
from watchdogd.sources.base import Measure
from watchdogd.sources.schedule import SourceJobs
from watchdogd.telemetry import Metrics

DEPTH = Measure("depth")
FIELD = Measure("field", "up")


class Scripted:
    """A source whose answers and delays a test decides; it records each fetch."""

    kind = "scripted"

    def __init__(self, name: str, delay: float = 0.0, fail: bool = False) -> None:
        self.name = name
        self.delay = delay
        self.fail = fail
        self.fetches: list[tuple[float, tuple[Measure, ...]]] = []
        self.closed = False
        self.running = 0
        self.most_running = 0

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        self.fetches.append((time.monotonic(), tuple(measures)))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise SourceError("refused")
            return {m: Sample(at, float(len(self.fetches))) for m in measures}
        finally:
            self.running -= 1

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def jobs() -> AsyncIterator[SourceJobs]:
    scheduler = AsyncIOScheduler()
    scheduler.start()
    jobs = SourceJobs(scheduler, Metrics(CollectorRegistry()), jitter=0.0)
    yield jobs
    await jobs.close()
    scheduler.shutdown(wait=False)


async def test_one_poll_feeds_every_subscriber(jobs: SourceJobs) -> None:
    source = Scripted("queue")
    got: dict[str, list[Mapping[Measure, Sample]]] = {"a": [], "b": []}
    jobs.add(source, interval=0.2, timeout=1.0)
    jobs.subscribe("queue", "a", [DEPTH], lambda _, s: got["a"].append(s))
    jobs.subscribe("queue", "b", [DEPTH, FIELD], lambda _, s: got["b"].append(s))
    await asyncio.sleep(0.9)
    assert 3 <= len(source.fetches) <= 6
    # each poll asked once for the union of the measures, not once per rule
    assert all(measures == (DEPTH, FIELD) for _, measures in source.fetches)
    assert len(got["a"]) == len(got["b"]) == len(source.fetches)
    assert set(got["a"][0]) == {DEPTH}
    assert got["a"][-1][DEPTH] == got["b"][-1][DEPTH]


async def test_slow_source_never_delays_another(jobs: SourceJobs) -> None:
    slow = Scripted("slow", delay=5.0)
    fast = Scripted("fast")
    jobs.add(slow, interval=0.2, timeout=0.6)
    jobs.add(fast, interval=0.2, timeout=1.0)
    slow_samples: list[Sample] = []
    jobs.subscribe("slow", "r", [DEPTH], lambda _, s: slow_samples.append(s[DEPTH]))
    jobs.subscribe("fast", "r", [DEPTH], lambda _, s: None)
    await asyncio.sleep(1.5)
    gaps = [b[0] - a[0] for a, b in zip(fast.fetches, fast.fetches[1:], strict=False)]
    assert len(fast.fetches) >= 6
    assert max(gaps) < 0.45, gaps
    # the slow one never runs twice at once, and each of its polls ends in no data at the timeout
    assert slow.most_running == 1
    assert slow_samples
    assert all(s.value is None and "timed out" in (s.reason or "") for s in slow_samples)


async def test_failing_source_gives_no_data_and_keeps_being_polled(jobs: SourceJobs) -> None:
    source = Scripted("db", fail=True)
    seen: list[Sample] = []
    jobs.add(source, interval=0.1, timeout=1.0)
    jobs.subscribe("db", "r", [FIELD], lambda _, s: seen.append(s[FIELD]))
    await asyncio.sleep(0.55)
    assert len(seen) >= 3
    assert all(s.value is None and s.reason == "refused" for s in seen)
    assert jobs.metrics.source_errors.labels("db", "bad_answer")._value.get() == len(seen)
    assert jobs.metrics.source_up.labels("db")._value.get() == 0


async def test_broken_subscriber_does_not_starve_the_others(jobs: SourceJobs) -> None:
    source = Scripted("queue")
    seen: list[Sample] = []

    def broken(_: str, __: Mapping[Measure, Sample]) -> None:
        raise RuntimeError("bug")

    jobs.add(source, interval=0.1, timeout=1.0)
    jobs.subscribe("queue", "broken", [DEPTH], broken)
    jobs.subscribe("queue", "ok", [DEPTH], lambda _, s: seen.append(s[DEPTH]))
    await asyncio.sleep(0.35)
    assert len(seen) >= 2


async def test_history_keeps_only_the_asked_age(jobs: SourceJobs) -> None:
    clock = [1000.0]
    jobs.wall = lambda: clock[0]
    source = Scripted("queue")
    jobs.add(source, interval=60, timeout=1.0, keep=30.0)
    jobs.subscribe("queue", "r", [DEPTH], lambda _, s: None)
    await asyncio.sleep(0.05)  # the first run happens at once
    for step in range(1, 6):
        clock[0] = 1000.0 + step * 10
        await jobs.poll_now("queue")
    kept = jobs.history("queue", DEPTH, since=0)
    assert [s.time for s in kept] == [1020.0, 1030.0, 1040.0, 1050.0]
    assert [s.time for s in jobs.history("queue", DEPTH, since=1035)] == [1040.0, 1050.0]


async def test_remove_stops_polling_and_closes(jobs: SourceJobs) -> None:
    source = Scripted("queue")
    jobs.add(source, interval=0.1, timeout=1.0)
    jobs.subscribe("queue", "r", [DEPTH], lambda _, s: None)
    await asyncio.sleep(0.25)
    await jobs.remove("queue")
    count = len(source.fetches)
    await asyncio.sleep(0.3)
    assert len(source.fetches) == count
    assert source.closed
    with pytest.raises(KeyError, match="not scheduled"):
        jobs.subscribe("queue", "r", [DEPTH], lambda _, s: None)


async def test_no_subscriber_no_poll(jobs: SourceJobs) -> None:
    source = Scripted("idle")
    jobs.add(source, interval=0.1, timeout=1.0)
    await asyncio.sleep(0.3)
    assert source.fetches == []


async def test_a_late_first_poll_does_not_delay_the_for_timer(jobs: SourceJobs) -> None:
    # Polls every 0.5 s and a rule `for: 1s`: the rule holds after the third poll, exactly two
    # intervals after the first. The event loop is busy for 30 ms when the first poll is due, so
    # that poll starts late and the others on time; stamped with when they began, the third poll
    # comes 0.97 s after the first and the rule fires one poll (0.5 s) late.
    rule = compile_rule(
        RuleConfig.model_validate({"name": "r", "source": "queue", "condition": "> 1", "for": "1s"})
    )
    source = Scripted("queue")
    state = start(rule, 0.0)
    fired: list[float] = []
    times: list[float] = []

    def on_poll(_: str, samples: Mapping[Measure, Sample]) -> None:
        nonlocal state
        sample = Sample(samples[DEPTH].time, 5.0)
        times.append(sample.time)
        state, transitions = evaluate(rule, state, sample, sample.time)
        fired.extend(t.at for t in transitions if t.fired)

    jobs.add(source, interval=0.5, timeout=1.0)
    jobs.subscribe("queue", "r", [DEPTH], on_poll)
    time.sleep(0.03)  # noqa: ASYNC251 - the loop is busy when the first poll is due
    await wait_for(lambda: len(times) >= 3, timeout=3.0)
    assert [round(b - a, 9) for a, b in itertools.pairwise(times)][:2] == [0.5, 0.5]
    assert fired == [times[2]]


async def test_polls_outside_the_schedule_keep_their_own_time_and_order(jobs: SourceJobs) -> None:
    clock = [1000.0]
    jobs.wall = lambda: clock[0]
    source = Scripted("queue")
    jobs.add(source, interval=60, timeout=1.0)
    seen: list[float] = []
    jobs.subscribe("queue", "r", [DEPTH], lambda _, s: seen.append(s[DEPTH].time))
    await wait_for(lambda: len(seen) == 1, timeout=2.0)
    clock[0] = 1012.5
    await jobs.poll_now("queue")
    clock[0] = 1011.0  # a clock that went back: stamps never do
    await jobs.poll_now("queue")
    assert seen[0] == pytest.approx(1000.0, abs=0.01)  # less the few ms it ran late
    assert seen[1:] == [1012.5, 1012.5]


def test_sources_alike_poll_apart_each_on_a_fixed_beat() -> None:
    scheduler = AsyncIOScheduler()
    jobs = SourceJobs(scheduler, Metrics(CollectorRegistry()))
    jobs.add(Scripted("a"), interval=10, timeout=1.0, scheduled=False)
    assert jobs.phase("a", 10) == 0.0  # alone: polled at once, never later than it must
    jobs.add(Scripted("b"), interval=10, timeout=1.0, scheduled=False)
    phases = {name: jobs.phase(name, 10) for name in ("a", "b")}
    assert phases == {name: jobs.phase(name, 10) for name in ("a", "b")}  # the same every time
    assert phases["a"] != phases["b"]
    assert all(0 <= p < 10 for p in phases.values())


def test_a_fleet_of_sources_alike_is_spread_over_the_whole_interval() -> None:
    # a thousand sources every 5 s: about 200 polls in each second, not a herd at its start
    scheduler = AsyncIOScheduler()
    jobs = SourceJobs(scheduler, Metrics(CollectorRegistry()))
    for n in range(1000):
        jobs.add(Scripted(f"svc{n}"), interval=5, timeout=1.0, scheduled=False)
    per_second = [0] * 5
    for n in range(1000):
        per_second[int(jobs.phase(f"svc{n}", 5))] += 1
    assert all(150 <= count <= 250 for count in per_second), per_second


async def wait_for(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
