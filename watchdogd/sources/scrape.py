"""Scrapes a ``/metrics`` endpoint and computes rates, ratios, quantiles and gauges itself.

Each poll fetches the exposition once, records the series some measure
wants at the poll time, and answers every measure from that history with
the arithmetic of :mod:`watchdogd.sources.promrate`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiohttp

from watchdogd.config.models import ScrapeSource
from watchdogd.config.types import format_duration
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.selector import Selector, parse_selector
from watchdogd.sources import promrate
from watchdogd.sources.base import Measure, read_body
from watchdogd.sources.counts import buckets, counts
from watchdogd.sources.exposition import parse_exposition
from watchdogd.sources.promrate import MAX_SERIES, Answer, Scrape, SeriesStore

MAX_BODY = 16 << 20
INLINE_PARSE = 256 << 10
"""A body up to this size is parsed on the event loop (well under a millisecond of it per
100 KiB); a larger one in a thread, so that one huge exposition never stalls the other polls."""
KINDS = ("metric", "rate", "ratio", "quantile", "counts", "buckets")
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


class MetricsScrape:
    """One GET of the exposition per poll; answers ``metric``, ``rate``, ``ratio``, ``quantile``.

    History is kept for the longest window a measure needs, or for the
    configured ``retention``. A scrape that fails as a whole (an HTTP error,
    a body that is too large or not an exposition, more than ``max_series``
    series) raises SourceError; a measure whose series are NaN or duplicated
    has no data on its own.
    """

    kind = "scrape"

    def __init__(
        self,
        name: str,
        config: ScrapeSource,
        session: aiohttp.ClientSession,
        *,
        max_series: int = MAX_SERIES,
        max_body: int = MAX_BODY,
    ) -> None:
        self.name = name
        self.config = config
        self.session = session
        self.max_series = max_series
        self.max_body = max_body
        self.store = SeriesStore(max_series)
        self.headers = {"Accept": _ACCEPT, **{k: v.get_secret_value() for k, v in config.headers.items()}}
        self._selectors: dict[str, Selector | str] = {}
        self.first_at: float | None = None
        """The first scrape this process made: a window reaching before it is not covered yet."""

    def _plans(
        self, measures: Sequence[Measure], at: float
    ) -> tuple[dict[Measure, Sample], dict[Measure, tuple[Selector, ...]], list[Selector]]:
        """Each measure's selectors; a measure that has none answered at once; the series to parse."""
        answers: dict[Measure, Sample] = {}
        plans: dict[Measure, tuple[Selector, ...]] = {}
        for measure in measures:
            plan = self._plan(measure)
            if isinstance(plan, str):
                answers[measure] = Sample(at, None, plan)
            else:
                plans[measure] = plan
        return answers, plans, [_series_read(m, s) for m, plan in plans.items() for s in plan]

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        answers, plans, wanted = self._plans(measures, at)
        text = await self.get()
        scrape = await read_exposition(text, wanted, self.max_series)
        previous = self.store.last_at
        horizon = self._horizon(plans)
        if previous is not None and any(m.kind in ("counts", "buckets") for m in plans):
            horizon = max(horizon, at - previous + 1e-3)  # counts are taken against the previous scrape
        try:
            self.store.ingest(at, scrape, horizon)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        if self.first_at is None:
            self.first_at = at
        for measure, selectors in plans.items():
            if measure.kind == "counts":
                answers[measure] = counts(self.store, selectors[0], selectors[1], at, previous)
                continue
            if measure.kind == "buckets":
                answers[measure] = buckets(self.store, _series_read(measure, selectors[0]), at, previous)
                continue
            answer = self._answer(measure, selectors, at)
            answers[measure] = Sample(at, answer.value, answer.reason)
        return answers

    async def get(self) -> str:
        """The exposition's text; raises SourceError."""
        cfg = self.config
        try:
            async with self.session.get(
                cfg.url.secret(),
                headers=self.headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            ) as response:
                if response.status != 200:
                    raise SourceError(f"{cfg.url} answered HTTP {response.status}", "http_status")
                body = await read_body(response, self.max_body)
        except TimeoutError as exc:
            raise SourceError(f"{cfg.url}: no answer within {cfg.timeout:g}s", "timeout") from exc
        except aiohttp.ClientConnectionError as exc:
            raise SourceError(f"cannot scrape {cfg.url}: {type(exc).__name__}", "unreachable") from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"cannot scrape {cfg.url}: {type(exc).__name__}") from exc
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError("body is not UTF-8 text") from None

    async def close(self) -> None:
        """The session belongs to the daemon."""

    def _plan(self, measure: Measure) -> tuple[Selector, ...] | str:
        """The selectors a measure reads, or why it cannot be answered."""
        if measure.kind not in KINDS:
            return f"a scrape source has no {measure.kind!r} measure"
        retention = self.config.retention
        if measure.kind != "metric" and retention is not None and measure.over > retention:
            return f"window {measure.over:g}s is longer than the retention of {retention:g}s"
        texts = [measure.expr, measure.denominator] if measure.kind in ("ratio", "counts") else [measure.expr]
        selectors: list[Selector] = []
        for text in texts:
            selector = self._selector(text)
            if isinstance(selector, str):
                return selector
            if measure.kind in ("quantile", "buckets") and selector.name is None:
                return f"{text}: a histogram needs its name"
            selectors.append(selector)
        return tuple(selectors)

    def _selector(self, text: str) -> Selector | str:
        cached = self._selectors.get(text)
        if cached is None:
            try:
                cached = parse_selector(text)
            except ValueError as exc:
                cached = str(exc)
            self._selectors[text] = cached
        return cached

    def _horizon(self, plans: Mapping[Measure, tuple[Selector, ...]]) -> float:
        if self.config.retention is not None:
            return self.config.retention
        return max((m.over for m in plans if m.kind != "metric"), default=0.0)

    def since(self, measure: Measure, sample: Sample, start: float) -> Sample:
        """``sample`` again, from the polls after ``start`` only, when its window reaches before it.

        Just after a deploy a 5m window is mostly the old version: a new version
        with no errors would read the old one's error ratio. The window is
        clipped at the deploy; until two polls after it, there is no value.
        """
        if measure.kind not in ("rate", "ratio", "quantile") or sample.time - measure.over >= start:
            return sample
        plan = self._plan(measure)
        if isinstance(plan, str):
            return sample
        if self.first_at is not None and self.first_at > start:
            return sample  # polling began after the deploy: every sample kept is the new version's
        answer = self._compute(measure, plan, sample.time, sample.time - start)
        if answer.value is None:
            return Sample(sample.time, None, f"since the deploy: {answer.reason}")
        return Sample(sample.time, answer.value)

    def _answer(self, measure: Measure, selectors: tuple[Selector, ...], at: float) -> Answer:
        over = measure.over
        seen = at - (self.first_at if self.first_at is not None else at)
        if measure.kind != "metric" and seen < over - 1e-9:
            # a window not covered yet would read low (a steady 100/s as 7.5/s): no value until it is
            return Answer(None, f"warming up: {format_duration(seen)} of {format_duration(over)} seen")
        return self._compute(measure, selectors, at, over)

    def _compute(self, measure: Measure, selectors: tuple[Selector, ...], at: float, over: float) -> Answer:
        store = self.store
        if measure.kind == "rate":
            return promrate.rate(store, selectors[0], at, over)
        if measure.kind == "ratio":
            return promrate.ratio(store, selectors[0], selectors[1], at, over)
        if measure.kind == "quantile":
            return promrate.quantile(store, selectors[0], measure.q, at, over)
        return promrate.gauge(store, selectors[0])


def _series_read(measure: Measure, selector: Selector) -> Selector:
    """What a measure's selector picks from the scrape: a histogram's ``_bucket`` series."""
    if measure.kind in ("quantile", "buckets") and selector.name is not None:
        return Selector(selector.text, selector.name + "_bucket", selector.matchers)
    return selector


async def read_exposition(text: str, wanted: Sequence[Selector], max_series: int) -> Scrape:
    """``parse_exposition``, on the loop for a small body, in a thread for a large one."""
    if len(text) <= INLINE_PARSE:
        return parse_exposition(text, wanted, max_series)
    return await asyncio.to_thread(parse_exposition, text, wanted, max_series)
