"""Fakes for testing watchdogd's decisions in memory, and rules around it, in milliseconds.

No Docker, no PostgreSQL, no real time: a ``FakeClock`` that tests step by
hand, the SQLite store in memory, a ``FakeSource`` whose next value the test
sets, a ``RecordingStep`` in place of a rollback step, a ``RecordingReporter``
that keeps every reported event::

    clock = FakeClock()
    daemon = await open_daemon(CONFIG, clock)          # sources polled only when told
    daemon_source(daemon, "prom").set(0.2)
    await daemon.poll("prom")
    await clock.advance(60)
    await wait_until(lambda: recorded.of("rollback_succeeded"))
"""

from __future__ import annotations

import asyncio
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from watchdogd.config import load_config_text
from watchdogd.config.models import Config
from watchdogd.model import Sample
from watchdogd.rollback.base import RollbackTarget, StepResult, StepStatus
from watchdogd.sources import Measure
from watchdogd.store import Store, open_store
from watchdogd.watch.report import Report

START = 1_800_000_000.0
"""Where a ``FakeClock`` starts: a time no real sample has."""


class FakeClock:
    """Time that moves only when the test says so; ``sleep`` waits for that."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, wake))
        await wake

    async def advance(self, seconds: float) -> None:
        """Move time on, wake every sleeper whose time has come, and let them run."""
        await settle()  # tasks just started get to say how long they sleep, from the old time
        self.now += seconds
        due = [(at, f) for at, f in self._sleepers if at <= self.now]
        self._sleepers = [(at, f) for at, f in self._sleepers if at > self.now]
        for _, wake in sorted(due, key=lambda item: item[0]):
            if not wake.done():
                wake.set_result(None)
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every task that can run, run (a few loop turns, and the store's threads)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def memory_store(clock: Callable[[], float]) -> Store:
    """The SQLite store, in memory: the same SQL as a real file, nothing on disk."""
    return await open_store("sqlite:///:memory:", clock=clock)


class FakeSource:
    """A source whose value the test sets; ``None`` (the default) answers no data."""

    kind = "fake"

    def __init__(self, name: str, value: float | None = None) -> None:
        self.name = name
        self.value = value
        self.polls = 0

    def set(self, value: float | None) -> None:
        self.value = value

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        self.polls += 1
        if self.value is None:
            return {m: Sample.missing(at, "no value set") for m in measures}
        return {m: Sample(at, self.value) for m in measures}

    async def close(self) -> None:
        return None


class FakeSources:
    """Makes a ``FakeSource`` for every source of a config; ``daemon.open(make_source=...)`` takes it."""

    def __init__(self) -> None:
        self.made: dict[str, FakeSource] = {}
        self.calls: list[str] = []
        """Every source made, by name, in order: a reload that keeps a source makes none."""

    def __call__(self, name: str, config: Any, session: Any) -> FakeSource:
        self.calls.append(name)
        source = self.made.get(name)
        if source is None:
            source = self.made[name] = FakeSource(name)
        return source

    def __getitem__(self, name: str) -> FakeSource:
        return self.made[name]


@dataclass
class RecordingStep:
    """A rollback step that records each run; ``fail`` makes the next runs fail, one per entry."""

    name: str
    runs: list[RollbackTarget] = field(default_factory=list)
    fail: list[str] = field(default_factory=list)
    """Reasons for the next runs to fail with, first first."""
    status: StepStatus = "done"

    async def run(self, target: RollbackTarget) -> StepResult:
        self.runs.append(target)
        if self.fail:
            return StepResult("failed", self.fail.pop(0))
        return StepResult(self.status, f"{self.name} recorded")

    async def describe(self, target: RollbackTarget) -> list[str]:
        return [f"{self.name} (recorded)"]


class NoDocker:
    """A Docker client for tests without Docker: every call fails, as an unreachable engine's would."""

    def __getattr__(self, name: str) -> Any:
        raise ConnectionError(f"no Docker engine in this test (asked for {name})")


class RecordingReporter:
    """Keeps every event the daemon reports: ``recorded.attach(daemon.report)``."""

    def __init__(self) -> None:
        self.reports: list[Report] = []

    def attach(self, reporter: Any) -> RecordingReporter:
        reporter.observers.append(lambda _, report: self.reports.append(report))
        return self

    def of(self, kind: str) -> list[Report]:
        return [r for r in self.reports if r.kind == kind]

    def kinds(self) -> list[str]:
        return [r.kind for r in self.reports]

    @property
    def notifications(self) -> list[Report]:
        return [r for r in self.reports if r.spec.notify is not None]


async def wait_until(predicate: Callable[[], Any], within: float = 5.0, what: str = "the condition") -> Any:
    """Wait (real time, at most ``within`` s) until ``predicate`` returns something true; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"{what} did not happen within {within:g}s")
        await asyncio.sleep(0.01)


def config_of(text: str) -> Config:
    """A config from YAML text (indentation of a triple-quoted string removed)."""
    return load_config_text(textwrap.dedent(text), "test.yaml")
