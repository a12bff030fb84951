"""A latency histogram's history for the replay tests: its cumulative ``le`` counters, poll by poll.

Each poll serves 80 to 120 requests whose latencies are log-normal (median 50 ms, p99 about
0.26 s); from ``slow_from`` on each takes twice as long (p99 about 0.51 s), as a slower version
would.
"""

from __future__ import annotations

import math
import random

BOUNDS = ("0.05", "0.1", "0.2", "0.4", "0.8", "1.6", "+Inf")


def cumulative(seed: int, polls: int, slow_from: int | None = None) -> list[list[int]]:
    """Each bucket's cumulative count (in ``BOUNDS`` order) after each poll."""
    rng = random.Random(seed)
    limits = [float(le) for le in BOUNDS]
    running = [0] * len(BOUNDS)
    counts: list[list[int]] = []
    for poll in range(polls):
        factor = 2.0 if slow_from is not None and poll >= slow_from else 1.0
        for _ in range(rng.randint(80, 120)):
            took = rng.lognormvariate(math.log(0.05), 0.7) * factor
            for i, limit in enumerate(limits):
                running[i] += took <= limit
        counts.append(list(running))
    return counts


def csv_rows(start: float, step: float, counts: list[list[int]]) -> list[str]:
    """``timestamp,le,count`` rows of ``counts``, one poll every ``step`` from ``start``."""
    return [
        f"{start + poll * step:.0f},{le},{count}"
        for poll, row in enumerate(counts)
        for le, count in zip(BOUNDS, row, strict=True)
    ]
