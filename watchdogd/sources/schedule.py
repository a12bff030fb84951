"""Polling on schedule: one apscheduler job per source, one poll for every rule on it.

Each source is an ``AsyncIOScheduler`` interval job with coalescing,
``max_instances=1`` and a misfire grace, so a slow source skips its own late
runs and never delays another. A poll asks the source once for the union of
the measures its subscribers need and hands each subscriber its samples.
Recent samples are kept per measure, bounded in age, for pre-deploy baselines.

A scheduled poll's samples carry the time the poll was planned for, not the
few milliseconds later the event loop got to it, as Prometheus evaluates a
group at its planned timestamps: a ``for: 1m`` held over polls 15 s apart is
then held after exactly four intervals, not four intervals less a few
milliseconds (which made the rule fire one poll late). Sources polled at the
same interval are spread by a fixed phase per source rather than by a random
jitter on every run, so their polls stay exactly one interval apart.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watchdogd.clock import now as steady
from watchdogd.model import Sample
from watchdogd.sources.base import Measure, Poller, Source
from watchdogd.sources.exec import ExecCommand
from watchdogd.sources.scrape import MetricsScrape
from watchdogd.telemetry import Metrics

log = structlog.get_logger("watchdogd.sources")

Callback = Callable[[str, Mapping[Measure, Sample]], Awaitable[None] | None]
"""Called after each poll with the source's name and the subscriber's samples."""

MAX_HISTORY = 20_000
"""Samples kept per measure at most, whatever the history age asked for."""

ON_TIME = 0.1
"""A scheduled poll started at most this fraction of its interval late (and at most
``ON_TIME_CAP`` seconds) is stamped with its planned time; a later one with the
time it really ran, since its answer describes that later moment."""
ON_TIME_CAP = 0.5


@dataclass
class _Subscriber:
    measures: tuple[Measure, ...]
    callback: Callback


@dataclass
class _Job:
    poller: Poller
    interval: float
    subscribers: dict[Hashable, _Subscriber] = field(default_factory=dict)
    history: dict[Measure, deque[Sample]] = field(default_factory=dict)
    keep: float = 0.0
    polls: int = 0
    running: asyncio.Lock = field(default_factory=asyncio.Lock)
    """A poll outside the schedule waits for the scheduled one: a rule's polls never overlap."""
    planned: datetime | None = None
    """When the scheduler planned the run it has just submitted (its own clock)."""
    beat: tuple[datetime, float] | None = None
    """A planned run and its stamp: later runs are stamped a whole number of intervals on."""
    stamped: float = float("-inf")
    """The time on the last poll's samples: stamps never go back."""

    def stamp(self, at: float, scheduler: AsyncIOScheduler, scheduled: bool) -> float:
        """The time for a poll begun at ``at``: its planned time when it ran on time.

        Planned times are counted from the job's beat, so polls one interval apart are
        stamped exactly one interval apart; the scheduler's clock drifting from ``at``'s
        by more than the tolerance starts a new beat.
        """
        if scheduled:
            planned, self.planned = self.planned, None
            late = (_now(scheduler) - planned).total_seconds() if planned is not None else -1.0
            tolerance = min(self.interval * ON_TIME, ON_TIME_CAP)
            if planned is not None and 0 <= late <= tolerance:
                on_time = at - late
                if self.beat is not None:
                    on_beat = self.beat[1] + (planned - self.beat[0]).total_seconds()
                    if abs(on_beat - on_time) <= tolerance:
                        on_time = on_beat
                    else:
                        self.beat = None
                if self.beat is None:
                    self.beat = (planned, on_time)
                if on_time > self.stamped:
                    at = on_time
        self.stamped = max(at, self.stamped)
        return self.stamped


class SourceJobs:
    """The scheduled polling of every source.

    ``wall`` gives the time stamped on samples (seconds since the epoch by
    default; tests pass their own). ``jitter`` is the largest phase, as a
    fraction of the interval, that spreads sources configured alike so they do
    not all poll in the same instant: the whole interval, so that a thousand
    sources every 5 s are 200 polls each second, not a herd of a thousand in
    the first half second of every interval (which held each poll for
    hundreds of milliseconds behind the others).
    """

    def __init__(
        self,
        scheduler: AsyncIOScheduler,
        metrics: Metrics,
        wall: Callable[[], float] = steady,
        jitter: float = 1.0,
    ) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.wall = wall
        self.jitter = jitter
        self.jobs: dict[str, _Job] = {}
        scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED)

    def _submitted(self, event: JobSubmissionEvent) -> None:
        if event.job_id.startswith("source:") and event.scheduled_run_times:
            job = self.jobs.get(event.job_id.removeprefix("source:"))
            if job is not None:
                job.planned = max(event.scheduled_run_times)

    def add(
        self, source: Source, interval: float, timeout: float, keep: float = 0.0, scheduled: bool = True
    ) -> None:
        """Poll ``source`` every ``interval``; ``keep`` seconds of samples stay for baselines.

        Adding a source already scheduled replaces its job (a new interval), keeping subscribers.
        Unscheduled, it is polled only by ``poll_now`` (in-memory tests step it by hand).
        """
        name = source.name
        previous = self.jobs.get(name)
        job = _Job(Poller(source, timeout, self.metrics), interval, keep=keep)
        if previous is not None:
            job.subscribers = previous.subscribers
            job.history = previous.history
            job.keep = max(keep, previous.keep)
            job.stamped = previous.stamped
        self.jobs[name] = job
        if not scheduled:
            return
        start = _now(self.scheduler) + timedelta(seconds=self.phase(name, interval))
        self.scheduler.add_job(
            self._run,
            "interval",
            args=[name, True],
            id=f"source:{name}",
            name=f"poll {name}",
            seconds=interval,
            start_date=start,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(interval)),
            replace_existing=True,
            next_run_time=start,
        )

    def phase(self, name: str, interval: float) -> float:
        """How long after the interval's start ``name`` polls: nothing for a lone source (any
        delay is only a later look at a bad deploy), else a fixed share of ``jitter`` drawn
        from its name, so sources configured alike poll apart and each exactly on its beat."""
        crowded = any(j.interval == interval for other, j in self.jobs.items() if other != name)
        if not crowded:
            return 0.0
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()  # mixes names alike (svc1, svc2)
        share = int.from_bytes(digest, "big") / 2**64  # in [0, 1): never a whole interval late
        return round(interval * self.jitter * share, 3)

    def reschedule(self) -> None:
        """Poll every source now and count its intervals from there.

        The scheduler plans runs in wall-clock time: after the wall clock stepped
        back, the next runs would otherwise wait for it to catch up.
        """
        now = _now(self.scheduler)
        for name, job in self.jobs.items():
            job.beat = None
            if self.scheduler.get_job(f"source:{name}") is not None:
                self.scheduler.modify_job(f"source:{name}", next_run_time=now)

    async def remove(self, name: str) -> None:
        """Stop polling ``name`` and close its connections."""
        job = self.jobs.pop(name, None)
        if job is None:
            return
        if self.scheduler.get_job(f"source:{name}") is not None:
            self.scheduler.remove_job(f"source:{name}")
        await job.poller.source.close()

    async def close(self) -> None:
        for name in list(self.jobs):
            await self.remove(name)

    def subscribe(self, source: str, key: Hashable, measures: Iterable[Measure], callback: Callback) -> None:
        """``callback`` gets ``measures`` of ``source`` after each of its polls (``key`` replaces)."""
        job = self.jobs.get(source)
        if job is None:
            raise KeyError(f"source '{source}' is not scheduled")
        job.subscribers[key] = _Subscriber(tuple(dict.fromkeys(measures)), callback)

    def unsubscribe_all(self, source: str) -> None:
        job = self.jobs.get(source)
        if job is not None:
            job.subscribers.clear()

    def unsubscribe(self, source: str, key: Hashable) -> None:
        job = self.jobs.get(source)
        if job is not None:
            job.subscribers.pop(key, None)

    def history(self, source: str, measure: Measure, since: float) -> list[Sample]:
        """The samples of ``measure`` polled at or after ``since``, oldest first."""
        job = self.jobs.get(source)
        kept = job.history.get(measure) if job is not None else None
        return [s for s in kept if s.time >= since] if kept else []

    def source(self, name: str) -> Source | None:
        """The source ``name`` as it is polled; None for one no rule reads."""
        job = self.jobs.get(name)
        return job.poller.source if job is not None else None

    def output(self, name: str) -> str | None:
        """The last output of an exec source (a smoke test's failures), for a proposal's reasons."""
        source = self.source(name)
        return (source.last_output or None) if isinstance(source, ExecCommand) else None

    def arm_commands(self, names: Iterable[str], spawn: Callable[[str, Awaitable[None]], object]) -> None:
        """A deploy is watched: the after_deploy commands among ``names`` run now, then every interval."""
        for name in names:
            source = self.source(name)
            if isinstance(source, ExecCommand) and not source.armed:
                source.arm()
                spawn(f"poll:{name}", self.poll_now(name))

    def since(self, name: str, measure: Measure, sample: Sample, start: float) -> Sample:
        """``sample`` from the data after ``start`` only, where the source can say (a scrape's window)."""
        source = self.source(name)
        return source.since(measure, sample, start) if isinstance(source, MetricsScrape) else sample

    def polls(self, source: str) -> int:
        job = self.jobs.get(source)
        return job.polls if job is not None else 0

    async def poll_now(self, name: str) -> None:
        """One poll of ``name`` outside the schedule (at a deploy's start, say)."""
        await self._run(name)

    async def _run(self, name: str, scheduled: bool = False) -> None:
        job = self.jobs.get(name)
        if job is None:
            return
        async with job.running:
            await self._poll(name, job, scheduled)

    async def _poll(self, name: str, job: _Job, scheduled: bool) -> None:
        measures = tuple(dict.fromkeys(m for sub in job.subscribers.values() for m in sub.measures))
        if not measures:
            return
        at = job.stamp(self.wall(), self.scheduler, scheduled)
        samples = await job.poller.poll(measures, at)
        job.polls += 1
        if job.keep > 0:
            self._remember(job, samples, at)
        for key, subscriber in list(job.subscribers.items()):
            mine = {m: samples[m] for m in subscriber.measures}
            try:
                result = subscriber.callback(name, mine)
                if result is not None:
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:  # one subscriber's bug must not starve the others
                log.exception("subscriber_failed", source=name, subscriber=str(key))

    @staticmethod
    def _remember(job: _Job, samples: Mapping[Measure, Sample], at: float) -> None:
        oldest = at - job.keep
        for measure, sample in samples.items():
            kept = job.history.setdefault(measure, deque(maxlen=MAX_HISTORY))
            kept.append(sample)
            while kept and kept[0].time < oldest:
                kept.popleft()


def _now(scheduler: AsyncIOScheduler) -> datetime:
    return datetime.now(scheduler.timezone)
