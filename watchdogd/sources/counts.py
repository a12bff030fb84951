"""Errors and requests counted between two scrapes: what a sequential rule weighs (and a
histogram's requests per bucket: what a latency rule compares).

Pure, over a :class:`~watchdogd.sources.promrate.SeriesStore`. Unlike
``increase()``, nothing is extrapolated: the counts are the counters' exact
growth from the previous scrape to the latest, so the statistics see whole
requests. A counter that went down was reset and counts from zero; a series
born since the previous scrape (``code="500"`` appears with the first error)
counts from zero too, as its counter did.
"""

from __future__ import annotations

import json
import math

from watchdogd.model import Sample
from watchdogd.rules.distribution import from_cumulative
from watchdogd.selector import Selector
from watchdogd.sources.promrate import SeriesStore, format_key


def growth(store: SeriesStore, selector: Selector, previous: float) -> float:
    """The summed growth of the counters ``selector`` picks from the scrape at ``previous`` to the latest."""
    total = 0.0
    latest = store.last_at
    for points in store.matching(selector).values():
        last_t, last_v = points[-1]
        if last_t != latest:
            continue  # gone from the latest scrape: nothing counted
        before = next((v for t, v in reversed(points) if t <= previous), None)
        if before is None:
            total += last_v  # born since the previous scrape
        else:
            total += last_v - before if last_v >= before else last_v
    return total


def counts(
    store: SeriesStore, errors: Selector, requests: Selector, at: float, previous: float | None
) -> Sample:
    """(errors, requests) since the scrape at ``previous`` as a Sample; its value is their ratio."""
    if previous is None:
        return Sample(at, None, "first scrape: counting starts at the next one")
    for selector in (errors, requests):
        duplicated = store.duplicated(selector)
        if duplicated is not None:
            return Sample(at, None, f"series {format_key(duplicated)} came twice in the scrape", "bad_data")
    if not store.matching(requests):
        return Sample(at, None, f"no series match {requests.text}")
    bad = growth(store, errors, previous)
    total = growth(store, requests, previous)
    if bad > total:
        return Sample(
            at,
            None,
            f"{bad:g} errors counted in {total:g} requests: {errors.text} is not part of {requests.text}",
            "bad_data",
        )
    return Sample(
        at, bad / total if total > 0 else None, None if total > 0 else "no traffic", None, (bad, total)
    )


class CounterMemory:
    """Errors and requests counted between two polls of a Prometheus server, per series.

    A ``prometheus`` source answers the counters' latest scraped values (the
    selectors are sent as instant queries); this keeps each series' previous
    value, keyed by its labels, and counts the growth as :func:`growth` does:
    a counter that went down was reset and counts from zero, a series new
    since the previous poll counts from zero. The limits, in docs/rules.md:
    counts are as fresh as the server's scrape (a poll faster than it counts
    nothing, then a scrape's worth at once), and a series gone stale (5 min
    without a scrape) and back counts its whole value again.
    """

    def __init__(self) -> None:
        self.previous: dict[str, tuple[dict[str, float], dict[str, float]]] = {}

    def counts(
        self,
        key: str,
        at: float,
        errors: dict[str, float],
        requests: dict[str, float],
        texts: tuple[str, str],
    ) -> Sample:
        """(errors, requests) since the previous poll of ``key`` as a Sample; its value is their ratio."""
        before = self.previous.get(key)
        self.previous[key] = (errors, requests)
        if before is None:
            return Sample(at, None, "first poll: counting starts at the next one")
        if not requests:
            return Sample(at, None, f"no series match {texts[1]}")
        bad = _grown(errors, before[0])
        total = _grown(requests, before[1])
        if bad > total:
            return Sample(
                at,
                None,
                f"{bad:g} errors counted in {total:g} requests: {texts[0]} is not part of {texts[1]}",
                "bad_data",
            )
        return Sample(
            at, bad / total if total > 0 else None, None if total > 0 else "no traffic", None, (bad, total)
        )


def _grown(now: dict[str, float], before: dict[str, float]) -> float:
    total = 0.0
    for labels, value in now.items():
        last = before.get(labels)
        total += value if last is None or value < last else value - last
    return total


def buckets(store: SeriesStore, selector: Selector, at: float, previous: float | None) -> Sample:
    """A histogram's requests since the scrape at ``previous``, per bucket, as a Sample.

    ``selector`` picks the ``_bucket`` series; their growth is summed by ``le`` (over every
    other label, as ``sum by (le)`` would) and made per bucket from the cumulative counts.
    The value is the requests counted.
    """
    if previous is None:
        return Sample(at, None, "first scrape: counting starts at the next one")
    duplicated = store.duplicated(selector)
    if duplicated is not None:
        return Sample(at, None, f"series {format_key(duplicated)} came twice in the scrape", "bad_data")
    matching = store.matching(selector)
    if not matching:
        return Sample(at, None, f"no series match {selector.text}")
    by_le: dict[float, float] = {}
    latest = store.last_at
    for (_, labels), points in matching.items():
        text = dict(labels).get("le")
        try:
            le = float(text) if text is not None else math.nan
        except ValueError:
            le = math.nan
        if math.isnan(le):
            why = f"{selector.text}: a bucket series without a numeric le label"
            return Sample(at, None, why, "bad_data")
        last_t, last_v = points[-1]
        if last_t != latest:
            continue
        before = next((v for t, v in reversed(points) if t <= previous), None)
        grown = last_v if before is None or last_v < before else last_v - before
        by_le[le] = by_le.get(le, 0.0) + grown
    histogram = from_cumulative(list(by_le.items()))
    if isinstance(histogram, str):
        return Sample(at, None, f"{selector.text}: {histogram}", "bad_data")
    bounds = _BOUNDS.setdefault(histogram[0], histogram[0]) if len(_BOUNDS) < 256 else histogram[0]
    requests = math.fsum(histogram[1])
    return Sample(at, requests, None if requests > 0 else "no traffic", None, buckets=(bounds, histogram[1]))


_BOUNDS: dict[tuple[float, ...], tuple[float, ...]] = {}
"""One tuple of bounds per layout, shared by every sample the history keeps (an hour of 1 s polls
would otherwise hold 3,600 copies)."""


class BucketMemory:
    """A histogram's requests per bucket between two polls of a Prometheus server, per series.

    The ``_bucket`` series are queried as an instant vector; each series' growth
    since the previous poll is counted as :class:`CounterMemory` counts it, then
    summed by ``le``. Its limits are CounterMemory's.
    """

    def __init__(self) -> None:
        self.previous: dict[str, dict[str, float]] = {}

    def buckets(self, key: str, at: float, series: dict[str, float], text: str) -> Sample:
        """The requests per bucket since the previous poll of ``key``; ``series`` by JSON labels."""
        before = self.previous.get(key)
        self.previous[key] = series
        if before is None:
            return Sample(at, None, "first poll: counting starts at the next one")
        if not series:
            return Sample(at, None, f"no series match {text}")
        by_le: dict[float, float] = {}
        for labels, value in series.items():
            try:
                le = float(json.loads(labels).get("le", "nan"))
            except (ValueError, AttributeError):
                le = math.nan
            if math.isnan(le):
                return Sample(at, None, f"{text}: a bucket series without a numeric le label", "bad_data")
            last = before.get(labels)
            grown = value if last is None or value < last else value - last
            by_le[le] = by_le.get(le, 0.0) + grown
        histogram = from_cumulative(list(by_le.items()))
        if isinstance(histogram, str):
            return Sample(at, None, f"{text}: {histogram}", "bad_data")
        requests = math.fsum(histogram[1])
        return Sample(at, requests, None if requests > 0 else "no traffic", None, buckets=histogram)
