"""Errors and requests counted between two scrapes: what a sequential rule weighs.

Pure, over a :class:`~watchdogd.sources.promrate.SeriesStore`. Unlike
``increase()``, nothing is extrapolated: the counts are the counters' exact
growth from the previous scrape to the latest, so the statistics see whole
requests. A counter that went down was reset and counts from zero; a series
born since the previous scrape (``code="500"`` appears with the first error)
counts from zero too, as its counter did.
"""

from __future__ import annotations

from watchdogd.model import Sample
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
