"""PromQL's range arithmetic over series that watchdogd keeps itself.

Pure: no I/O and no clock. A :class:`SeriesStore` holds a bounded history
of the series some measure wants, one point per scrape at the poll time it
was given; :func:`rate`, :func:`ratio`, :func:`quantile` and :func:`gauge`
answer from it at a time ``at`` the way Prometheus would answer

- ``sum(rate(m[over]))``,
- ``sum(rate(num[over])) / sum(rate(den[over]))``,
- ``histogram_quantile(q, sum by (le) (rate(m_bucket[over])))``,
- ``sum(m)``.

A range ``[over]`` at ``at`` holds the points in ``(at - over, at]``.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import overload

from watchdogd.selector import Selector

MAX_SERIES = 10_000
"""At most this many series per scrape, and kept in a store."""

NOT_ENOUGH_HISTORY = "not enough history yet"
NO_TRAFFIC = "no traffic"

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]
Point = tuple[float, float]


def series_key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    return name, tuple(sorted(labels.items()))


def format_key(key: SeriesKey) -> str:
    """``name{a="x", b="y"}`` as PromQL writes a series."""
    name, labels = key
    if not labels:
        return name
    inner = ", ".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


@dataclass(frozen=True, slots=True)
class Scrape:
    """One parsed exposition: the values of the wanted series, and which of them came twice."""

    values: Mapping[SeriesKey, float]
    duplicates: frozenset[SeriesKey] = frozenset()


@dataclass(frozen=True, slots=True)
class Answer:
    """A measure's value, or None and why there is none."""

    value: float | None
    reason: str | None = None


class NoData(Exception):
    """A measure has no value; the message says why."""


class _Empty(NoData):
    """Nothing to compute from: no series match, or none has two points in the window."""


class Points(Sequence[Point]):
    """A series' kept points, oldest first, as ``(time, value)`` pairs read from its arrays."""

    __slots__ = ("_head", "_times", "_values")

    def __init__(self, times: array[float], values: array[float], head: int) -> None:
        self._times = times
        self._values = values
        self._head = head

    def __len__(self) -> int:
        return len(self._times) - self._head

    @overload
    def __getitem__(self, index: int) -> Point: ...

    @overload
    def __getitem__(self, index: slice) -> list[Point]: ...

    def __getitem__(self, index: int | slice) -> Point | list[Point]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(index)
        at = self._head + index
        return self._times[at], self._values[at]

    def __iter__(self) -> Iterator[Point]:
        return zip(islice(self._times, self._head, None), islice(self._values, self._head, None), strict=True)

    def __reversed__(self) -> Iterator[Point]:
        for at in range(len(self._times) - 1, self._head - 1, -1):
            yield self._times[at], self._values[at]

    def window(self, start: float, end: float) -> list[Point]:
        """The points in ``(start, end]``, found by bisection."""
        first = bisect_right(self._times, start, self._head)
        last = bisect_right(self._times, end, first)
        return list(zip(self._times[first:last], self._values[first:last], strict=True))


class _Series:
    """Times and values in two arrays of doubles (16 bytes a point, not a tuple and a float's
    88): a fleet keeps a million points. Trimmed points are skipped, then cut off in bulk."""

    __slots__ = ("head", "last_seen", "times", "values")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")
        self.head = 0
        self.last_seen = -math.inf

    def __len__(self) -> int:
        return len(self.times) - self.head

    def append(self, at: float, value: float) -> None:
        self.times.append(at)
        self.values.append(value)

    def trim(self, oldest: float) -> None:
        """Forget the points before ``oldest``."""
        head = bisect_left(self.times, oldest, self.head)
        if head > 32 and 2 * head > len(self.times):
            del self.times[:head]
            del self.values[:head]
            head = 0
        self.head = head

    @property
    def points(self) -> Points:
        return Points(self.times, self.values, self.head)

    @property
    def last(self) -> float:
        return self.values[-1]


class SeriesStore:
    """Bounded per-series history: the points of the last ``horizon`` seconds.

    Points older than ``horizon`` before the latest scrape are dropped, a
    series gone from the scrapes for that long is forgotten, and past
    ``max_series`` kept series the ones gone longest are forgotten first.
    """

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        if max_series < 1:
            raise ValueError("max_series must be at least 1")
        self.max_series = max_series
        self.last_at: float | None = None
        self.duplicates: frozenset[SeriesKey] = frozenset()
        self._series: dict[SeriesKey, _Series] = {}
        self._scrapes: deque[float] = deque()
        self._matched: dict[Selector, list[SeriesKey]] = {}

    def __len__(self) -> int:
        return len(self._series)

    @property
    def points(self) -> int:
        """How many points are kept, over all series."""
        return sum(len(s) for s in self._series.values())

    def ingest(self, at: float, scrape: Scrape, horizon: float) -> None:
        """Record ``scrape`` as taken at ``at``; keep ``horizon`` seconds of history."""
        if self.last_at is not None and at <= self.last_at:
            raise ValueError(f"scrape at {at:.3f} is not after the previous one at {self.last_at:.3f}")
        self.last_at = at
        self._scrapes.append(at)
        for key, value in scrape.values.items():
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
                self._matched.clear()
            series.append(at, value)
            series.last_seen = at
        self.duplicates = scrape.duplicates
        self._trim(at - max(horizon, 0.0))

    def _trim(self, oldest: float) -> None:
        # Keeping points at exactly ``oldest`` costs one point and keeps the
        # latest scrape when the horizon is 0 (gauges only).
        scrapes = self._scrapes
        while scrapes and scrapes[0] < oldest:
            scrapes.popleft()
        gone: list[SeriesKey] = []
        for key, series in self._series.items():
            series.trim(oldest)
            if not len(series):
                gone.append(key)
        for key in gone:
            del self._series[key]
        if gone:
            self._matched.clear()
        excess = len(self._series) - self.max_series
        if excess > 0:
            vanished = sorted(
                (key for key, s in self._series.items() if s.last_seen != self.last_at),
                key=lambda k: self._series[k].last_seen,
            )
            for key in vanished[:excess]:
                del self._series[key]
            self._matched.clear()

    def scrapes_in(self, start: float, end: float) -> int:
        """How many scrapes fall in ``(start, end]``."""
        return sum(1 for t in self._scrapes if start < t <= end)

    def matching(self, selector: Selector) -> dict[SeriesKey, Points]:
        """The kept series ``selector`` picks, with their points, oldest first."""
        return {key: self._series[key].points for key in self._picked(selector)}

    def latest(self, selector: Selector) -> dict[SeriesKey, float]:
        """Values in the latest scrape of the series ``selector`` picks."""
        found = ((key, self._series[key]) for key in self._picked(selector))
        return {key: series.last for key, series in found if series.last_seen == self.last_at}

    def _picked(self, selector: Selector) -> list[SeriesKey]:
        """The keys ``selector`` picks, matched again only when the kept series change."""
        keys = self._matched.get(selector)
        if keys is None:
            keys = [key for key in self._series if selector.matches(key[0], dict(key[1]))]
            if len(self._matched) > 256:
                self._matched.clear()
            self._matched[selector] = keys
        return keys

    def duplicated(self, selector: Selector) -> SeriesKey | None:
        """A series ``selector`` picks that came more than once in the latest scrape."""
        for key in sorted(self.duplicates):
            if selector.matches(key[0], dict(key[1])):
                return key
        return None


# --- Prometheus's functions ---------------------------------------------------------


def counter_increase(points: Sequence[Point]) -> float:
    """How much a counter grew from the first point to the last; a drop is a reset, added back."""
    increase = points[-1][1] - points[0][1]
    previous = points[0][1]
    for _, value in points[1:]:
        if value < previous:
            increase += previous
        previous = value
    return increase


def extrapolated_rate(
    points: Sequence[Point], start: float, end: float, *, counter: bool = True, per_second: bool = True
) -> float:
    """Prometheus's ``rate`` (or ``increase`` without ``per_second``) over ``(start, end]``.

    ``points`` are the samples in the range, oldest first, at least two. A
    counter that went down was reset: the value before the drop is added
    back. The increase seen between the first and last point is extrapolated
    towards the range's edges, by half an average interval where the gap to an
    edge is over 1.1 intervals, and a counter never further back than the time
    it would have been zero (in that order, as Prometheus 2.52 and later do).
    """
    if len(points) < 2:
        raise ValueError("a rate needs at least two points")
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    increase = counter_increase(points) if counter else last_v - first_v
    sampled = last_t - first_t
    if sampled <= 0:
        raise ValueError("points of a rate must have increasing times")
    average = sampled / (len(points) - 1)
    threshold = average * 1.1
    # Prometheus 2.52 and later: first, a gap to an edge over 1.1 intervals means the
    # series starts (or ends) inside the range, half an interval away; only then is a
    # counter kept from going below zero. (Before 2.52 the zero point came first, so a
    # series appearing mid-window read up to 20% high.)
    to_start = first_t - start
    if to_start >= threshold:
        to_start = average / 2
    if counter and increase > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / increase))
    to_end = end - last_t
    if to_end >= threshold:
        to_end = average / 2
    result = increase * ((sampled + to_start + to_end) / sampled)
    return result / (end - start) if per_second else result


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> Answer:
    """Prometheus's ``histogram_quantile`` over ``(upper bound, cumulative count)`` buckets.

    Linear interpolation inside the bucket holding the rank; the lowest
    bucket starts at 0 when its bound is positive; a rank in the +Inf bucket
    answers the highest finite bound. Counts that dip (rates of buckets
    scraped a moment apart) are lifted to the running maximum.
    """
    if math.isnan(q):
        return Answer(None, "quantile is NaN")
    if q < 0:
        return Answer(-math.inf)
    if q > 1:
        return Answer(math.inf)
    merged: dict[float, float] = {}
    for bound, count in buckets:
        if not math.isnan(bound):
            merged[bound] = merged.get(bound, 0.0) + count
    bounds = sorted(merged)
    if not bounds or bounds[-1] != math.inf:
        return Answer(None, "histogram has no +Inf bucket")
    if len(bounds) < 2:
        return Answer(None, "histogram has no bucket besides +Inf")
    counts: list[float] = []
    running = -math.inf
    for bound in bounds:
        running = max(running, merged[bound])
        counts.append(running)
    observations = counts[-1]
    if not observations > 0:
        return Answer(None, "no observations in the window")
    rank = q * observations
    last = len(bounds) - 1
    b = next((i for i in range(last) if counts[i] >= rank), last)
    if b == last:
        return Answer(bounds[-2])
    if b == 0 and bounds[0] <= 0:
        return Answer(bounds[0])
    lower, upper, count = 0.0, bounds[b], counts[b]
    if b > 0:
        lower = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:
        return Answer(lower)
    return Answer(lower + (upper - lower) * (rank / count))


# --- measures ------------------------------------------------------------------------


def rate(store: SeriesStore, selector: Selector, at: float, over: float) -> Answer:
    """``sum(rate(selector[over]))`` at ``at``."""
    try:
        return Answer(math.fsum(_rates(store, selector, at, over).values()))
    except NoData as exc:
        return Answer(None, str(exc))


def ratio(store: SeriesStore, numerator: Selector, denominator: Selector, at: float, over: float) -> Answer:
    """``sum(rate(numerator[over])) / sum(rate(denominator[over]))`` at ``at``.

    Unlike PromQL, a numerator with no series yet (an error counter that
    has not been created) counts as 0 rather than emptying the answer.
    """
    try:
        below = math.fsum(_rates(store, denominator, at, over).values())
        try:
            above = math.fsum(_rates(store, numerator, at, over).values())
        except _Empty:
            above = 0.0
    except NoData as exc:
        return Answer(None, str(exc))
    if below == 0:
        if above == 0:
            return Answer(None, NO_TRAFFIC)
        return Answer(None, f"{denominator.text} does not grow while {numerator.text} does")
    return Answer(above / below)


def quantile(store: SeriesStore, histogram: Selector, q: float, at: float, over: float) -> Answer:
    """``histogram_quantile(q, sum by (le) (rate(histogram_bucket[over])))`` at ``at``."""
    if histogram.name is None:
        return Answer(None, f"{histogram.text}: a quantile needs the histogram's name")
    buckets = Selector(histogram.text, histogram.name + "_bucket", histogram.matchers)
    try:
        rates = _rates(store, buckets, at, over)
    except NoData as exc:
        return Answer(None, str(exc))
    by_le: list[tuple[float, float]] = []
    for (_, labels), value in rates.items():
        le = dict(labels).get("le")
        if le is None:
            continue
        try:
            by_le.append((float(le), value))
        except ValueError:
            continue
    if not by_le:
        return Answer(None, f"{histogram.name}_bucket has no series with an le label")
    return bucket_quantile(q, by_le)


def gauge(store: SeriesStore, selector: Selector) -> Answer:
    """``sum(selector)`` over the series of the latest scrape."""
    duplicate = store.duplicated(selector)
    if duplicate is not None:
        return Answer(None, f"{format_key(duplicate)} appears more than once in the scrape")
    latest = store.latest(selector)
    if not latest:
        return Answer(None, f"no series match {selector.text}")
    for key, value in sorted(latest.items()):
        if math.isnan(value):
            return Answer(None, f"{format_key(key)} is NaN")
    values = list(latest.values())
    total = math.fsum(values) if all(math.isfinite(v) for v in values) else sum(values)
    if math.isnan(total):
        return Answer(None, f"series of {selector.text} add +Inf and -Inf")
    return Answer(total)


def _rates(store: SeriesStore, selector: Selector, at: float, over: float) -> dict[SeriesKey, float]:
    """``rate(selector[over])`` per series; raises NoData."""
    if over <= 0:
        raise NoData(f"window must be positive, not {over:g}s")
    duplicate = store.duplicated(selector)
    if duplicate is not None:
        raise NoData(f"{format_key(duplicate)} appears more than once in the scrape")
    series = store.matching(selector)
    if not series:
        raise _Empty(f"no series match {selector.text}")
    start = at - over
    if store.scrapes_in(start, at) < 2:
        raise _Empty(NOT_ENOUGH_HISTORY)
    rates: dict[SeriesKey, float] = {}
    for key, points in sorted(series.items()):
        window = points.window(start, at)
        if len(window) < 2:
            continue
        for _, value in window:
            if not math.isfinite(value):
                raise NoData(f"{format_key(key)} has the value {value} in the window")
        rates[key] = extrapolated_rate(window, start, at)
    if not rates:
        raise _Empty(NOT_ENOUGH_HISTORY)
    return rates
