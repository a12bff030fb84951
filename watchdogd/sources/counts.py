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
