"""``watchdogd replay`` for a latency rule: a histogram's cumulative ``le`` counters over a history.

A latency rule reads a histogram's requests per bucket between polls, so its history is one
cumulative counter per bucket bound: from a Prometheus server (a range query of
``sum by (le) (<name>_bucket{matchers})``, the series the rule's source reads; a reset shows as a
sum going down and counts from zero, as exactly as the sum allows), or from a CSV file of
``timestamp,le,count`` rows, one per bucket (``+Inf`` included) and time.

From ``--deploy-at``, or a sweep of deploys over the history, as for a sequential rule
(watchdogd/replay_counts.py).
"""

from __future__ import annotations

import math
from argparse import Namespace
from pathlib import Path

from watchdogd.config.models import Config, RuleConfig, ServiceConfig
from watchdogd.errors import WatchdogError
from watchdogd.model import Sample
from watchdogd.replay import (
    Series,
    SeriesFileError,
    bucket_samples,
    csv_rows,
    on_ticks,
    query_range_series,
    read_text,
)
from watchdogd.replay_counts import replay_learning
from watchdogd.selector import bucket_selector

Points = dict[float, dict[float, float | None]]
"""Cumulative counts by bucket bound (``math.inf`` for +Inf), then by time."""


def buckets_from_prometheus(
    url: str, histogram: str, start_at: float, end_at: float, step: float, timeout: float
) -> list[Sample]:
    """The histogram's bucket counters summed by ``le``, one sample of requests per bucket per step."""
    try:
        selector = bucket_selector(histogram)
    except ValueError as exc:
        raise WatchdogError(f"histogram '{histogram}': {exc}") from None
    series = query_range_series(url, f"sum by (le) ({selector})", start_at, end_at, step, timeout)
    return _ticks(by_bound(series, selector), step, selector)


def by_bound(series: Series, selector: str) -> Points:
    """The series of ``sum by (le)`` by their bound: ``le="1"`` and ``le="1.0"`` (as Prometheus 3
    writes it) are the same bucket and add up."""
    by_le: Points = {}
    for labels, points in series:
        le = _le(labels.get("le", ""))
        if le is None:
            raise SeriesFileError(f"{selector}: a bucket series without a numeric le label: {labels}")
        counts = by_le.setdefault(le, {})
        for at, value in points:
            earlier = counts.get(at)
            counts[at] = value if earlier is None else earlier if value is None else earlier + value
    if not by_le:
        raise SeriesFileError(f"no series match {selector} between --start and --end")
    return by_le


def buckets_from_csv(path: str | Path, step: float) -> list[Sample]:
    """``timestamp,le,count`` rows of cumulative counts (a header line allowed) as samples of requests
    per bucket; an empty count is a missing point."""
    name = str(path)
    by_le: Points = {}
    line_of: dict[tuple[float, float], int] = {}
    for number, at, row in csv_rows(read_text(path), name, "timestamp,le,count"):
        where = f"{name}:{number}"
        le = _le(row[1])
        if le is None:
            raise SeriesFileError(
                f"{where}: le '{row[1].strip()[:40]}' is not a bucket bound (a number or +Inf)"
            )
        count = _count(row[2], where)
        if (le, at) in line_of:
            raise SeriesFileError(
                f"{where}: a second count for le={row[1].strip()} at {row[0].strip()}"
                f" (line {line_of[le, at]})"
            )
        line_of[le, at] = number
        by_le.setdefault(le, {})[at] = count
    if not by_le:
        raise SeriesFileError(f"{name}: no rows in the file")
    return _ticks(by_le, step, name)


def _le(text: str) -> float | None:
    try:
        le = float(text.strip())
    except ValueError:
        return None
    return None if math.isnan(le) or le == -math.inf else le


def _count(text: str, where: str) -> float | None:
    if not text.strip():
        return None
    try:
        count = float(text)
    except ValueError:
        raise SeriesFileError(f"{where}: count '{text.strip()[:40]}' is not a number") from None
    if not math.isfinite(count) or count < 0:
        raise SeriesFileError(f"{where}: count {text.strip()} is not a cumulative count (0 or more)")
    return count


def _ticks(by_le: Points, step: float, name: str) -> list[Sample]:
    """One sample per step from the first point to the last, each bucket's counter on the ticks."""
    if math.inf not in by_le:
        raise SeriesFileError(f"{name}: no le=+Inf bucket: it counts every request")
    times = [at for counts in by_le.values() for at in counts]
    if not times:
        raise SeriesFileError(f"{name}: the bucket counters have no points")
    first, last = min(times), max(times)
    counters = []
    ticks: list[float] = []
    for le in sorted(by_le):
        on = on_ticks(by_le[le].items(), first, last, step)
        counters.append((le, [s.value for s in on]))
        ticks = [s.time for s in on]
    return bucket_samples(counters, ticks)


def replay_latency(
    config: Config, service_name: str, service: ServiceConfig, rule_config: RuleConfig, args: Namespace
) -> list[str]:
    """``watchdogd replay`` of a latency rule: the lines to print; WatchdogError says what is wrong."""
    spec = rule_config.latency
    assert spec is not None
    window = service.window or config.defaults.window

    def from_prometheus(
        url: str, start_at: float, end_at: float, step: float, timeout: float
    ) -> list[Sample]:
        return buckets_from_prometheus(url, spec.histogram, start_at, end_at, step, timeout)

    return replay_learning(config, service_name, rule_config, args, window, buckets_from_csv, from_prometheus)
