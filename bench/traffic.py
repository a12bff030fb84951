"""Synthetic healthy traffic that is not binomial: what a sequential rule must not fire on.

Per poll (1 s by default), from a seeded ``random.Random``:

- requests: Poisson around a daily shape between 10 and 200 requests/s, each
  window starting at a random time of day;
- the error rate: ``base`` times a factor drawn afresh every minute
  (log-normal, sigma ``drift``, 0.3): the rate drifts with what the users do;
- short healthy bursts: about one every 20 minutes, 5 to 15 s at ``boost``
  (four) times the rate (a retry storm, a cache refill);
- errors come in clumps (1 + geometric, mean 2): one failing upstream call
  fails several requests.

Pure Python (no numpy in the sidecar's dependencies); the bench and the test
suite share it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

DAY = 86_400.0


class Traffic:
    def __init__(
        self,
        rng: random.Random,
        base: float = 0.005,
        low: float = 10.0,
        high: float = 200.0,
        interval: float = 1.0,
        bursts_per_hour: float = 3.0,
        clump: float = 2.0,
        boost: float = 4.0,
        drift: float = 0.3,
    ) -> None:
        self.rng = rng
        self.base = base
        self.low = low
        self.high = high
        self.interval = interval
        self.bursts_per_hour = bursts_per_hour
        self.clump = clump
        self.boost = boost
        self.drift = drift
        self.phase = rng.uniform(0, DAY)
        self.factor = 1.0
        self.minute = -1
        self.burst_until = -1.0

    def rps(self, t: float) -> float:
        shape = 0.5 - 0.5 * math.cos(2 * math.pi * (t + self.phase) / DAY)
        return self.low + (self.high - self.low) * shape

    def rate(self, t: float) -> float:
        """The healthy error rate at ``t``: drifting by the minute, bursting now and then."""
        rng = self.rng
        minute = int(t // 60)
        if minute != self.minute:
            self.minute = minute
            self.factor = math.exp(rng.gauss(-(self.drift**2) / 2, self.drift))  # mean 1
        if t >= self.burst_until and rng.random() < self.bursts_per_hour * self.interval / 3600:
            self.burst_until = t + rng.uniform(5, 15)
        boost = self.boost if t < self.burst_until else 1.0
        return min(0.9, self.base * self.factor * boost)

    def poll(self, t: float, rate: float | None = None) -> tuple[int, int]:
        """(errors, requests) in the poll ending at ``t``; ``rate`` overrides the healthy one."""
        n = poisson(self.rng, self.rps(t) * self.interval)
        p = self.rate(t) if rate is None else rate
        mean_clump = 1 + (self.clump - 1)
        clumps = poisson(self.rng, n * p / mean_clump)
        errors = 0
        for _ in range(clumps):
            errors += 1 + geometric(self.rng, self.clump - 1)
        return min(errors, n), n

    def polls(self, start: float, count: int) -> Iterator[tuple[int, int]]:
        for i in range(count):
            yield self.poll(start + (i + 1) * self.interval)


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 40:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    k = 0
    product = rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def geometric(rng: random.Random, mean: float) -> int:
    """Failures before a success, with the given mean (0 for a mean of 0)."""
    if mean <= 0:
        return 0
    p = 1 / (1 + mean)
    return int(math.log(1 - rng.random()) / math.log(1 - p))
