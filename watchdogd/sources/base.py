"""What every source shares: the measure a rule asks for, and the poll wrapper.

A source is polled once per interval for every measure its rules need; each
measure gets a Sample, a value with its time or no data with a reason. A
failure is counted and logged when the source goes bad and when it recovers,
never once per poll, and it never raises out of the poll.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog

from watchdogd.config.models import RuleConfig
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.telemetry import Metrics

log = structlog.get_logger("watchdogd.sources")


@dataclass(frozen=True, slots=True)
class Measure:
    """What a rule asks of its source; equal measures are computed once per poll.

    ``kind`` is one of ``query``, ``field``, ``metric``, ``rate``, ``ratio``,
    ``quantile``, ``counts``, ``buckets``, ``count``, ``absence``, ``depth``, ``alerts``.
    """

    kind: str
    expr: str = ""
    denominator: str = ""
    over: float = 0.0
    q: float = 0.0

    @classmethod
    def of(cls, rule: RuleConfig) -> Measure:
        if rule.query is not None:
            return cls("query", rule.query)
        if rule.rate is not None:
            return cls("rate", rule.rate.metric, over=rule.rate.over)
        if rule.ratio is not None:
            return cls("ratio", rule.ratio.numerator, rule.ratio.denominator, over=rule.ratio.over)
        if rule.sequential is not None:
            return cls("counts", rule.sequential.errors, rule.sequential.total)
        if rule.latency is not None:
            return cls("buckets", rule.latency.histogram)
        if rule.quantile is not None:
            return cls("quantile", rule.quantile.metric, over=rule.quantile.over, q=rule.quantile.q)
        if rule.metric is not None:
            return cls("metric", rule.metric)
        if rule.pattern is not None:
            if rule.absent_for is not None:
                return cls("absence", rule.pattern)
            return cls("count", rule.pattern, over=rule.over or 0.0)
        if rule.field is not None:
            return cls("field", rule.field)
        if rule.alerts is not None:
            return cls("alerts", rule.alerts)
        return cls("depth")


class Source(Protocol):
    """One kind of I/O: given the measures, fetch once and answer each of them.

    ``fetch`` raises SourceError (or anything, for a bug) when the whole poll
    failed; a measure that alone has no value maps to a Sample with no value.
    """

    name: str
    kind: str

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]: ...

    async def close(self) -> None: ...


class Poller:
    """Polls one source with a timeout, timing and counting, never raising."""

    def __init__(self, source: Source, timeout: float, metrics: Metrics) -> None:
        self.source = source
        self.timeout = timeout
        self.metrics = metrics
        self.failing: str | None = None

    async def poll(self, measures: Sequence[Measure], at: float) -> dict[Measure, Sample]:
        name = self.source.name
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                answers = await self.source.fetch(measures, at)
        except TimeoutError:
            return self._failed(measures, at, f"timed out after {self.timeout:g}s", "timeout", started)
        except SourceError as exc:
            return self._failed(measures, at, str(exc), exc.kind, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a source must not stop the daemon
            log.exception("source_crashed", source=name)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return self._failed(measures, at, reason, "internal", started)
        self.metrics.source_duration.labels(name).observe(time.perf_counter() - started)
        result: dict[Measure, Sample] = {}
        refused: list[Sample] = []
        for measure in measures:
            sample = answers.get(measure) or Sample(at, None, "no answer for this measure")
            if sample.value is not None and math.isnan(sample.value):
                sample = Sample(at, None, "value is NaN")
            if sample.error is not None:
                refused.append(sample)  # the source answered, but not with a value: an error all the same
            result[measure] = sample
        for sample in refused:
            self.metrics.source_errors.labels(name, sample.error).inc()
        if refused:
            self._failing(refused[0].reason or "refused", refused[0].error or "bad_answer")
        else:
            self.metrics.source_up.labels(name).set(1)
            if self.failing is not None:
                log.info("source_recovered", source=name, was=self.failing)
                self.failing = None
        return result

    def _failed(
        self, measures: Sequence[Measure], at: float, reason: str, kind: str, started: float
    ) -> dict[Measure, Sample]:
        name = self.source.name
        self.metrics.source_duration.labels(name).observe(time.perf_counter() - started)
        self.metrics.source_errors.labels(name, kind).inc()
        self._failing(reason, kind)
        return {measure: Sample(at, None, reason, kind) for measure in measures}

    def _failing(self, reason: str, kind: str) -> None:
        """Said once when it starts failing, and again only when the reason changes."""
        name = self.source.name
        self.metrics.source_up.labels(name).set(0)
        if self.failing is None:
            log.warning("source_failing", source=name, reason=reason, kind=kind)
        elif self.failing != reason:
            log.info("source_failing_differently", source=name, reason=reason, kind=kind)
        self.failing = reason


async def read_body(response: aiohttp.ClientResponse, limit: int, truncate: bool = False) -> bytes:
    """The whole body, at most ``limit`` bytes: longer is a SourceError, or cut with ``truncate``."""
    length = response.content_length
    if not truncate and length is not None and length > limit:
        raise SourceError(f"body of {length} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        if size + len(chunk) > limit:
            if truncate:
                chunks.append(chunk[: limit - size])
                break
            raise SourceError(f"body is over the limit of {limit} bytes")
        size += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)
