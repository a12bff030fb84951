"""watchdogd's clock: seconds since the epoch that never jump.

Windows, `for` timers, grace periods and deployment windows are all measured
on it. The wall clock is read once, when the process starts; from then on time
advances with the monotonic clock, so a wall clock stepped forward (NTP, an
operator's `date -s`) does not fire a pending rule or end a window early, and a
step back does not hold them off. Times stored and shown stay those of the
wall clock as it was at start; a restart takes the wall clock again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

JUMP = 1.0
"""Seconds of disagreement between the wall clock and this clock that count as a jump."""


class Clock(Protocol):
    """What watchdogd's parts are handed: the time, and a way to wait for it to pass."""

    def __call__(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SteadyClock:
    """The wall clock at start, advanced by the monotonic clock; call it for the time."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._anchor = wall() - monotonic()

    def __call__(self) -> float:
        return self._anchor + self._monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def drift(self) -> float:
        """How far the wall clock is ahead of this clock (negative: behind)."""
        return self._wall() - self()


now = SteadyClock()
"""The process's clock; every part of watchdogd that stamps or measures time uses it."""


class DriftWatch:
    """Notices when the wall clock jumps away from a ``SteadyClock`` (NTP, ``date -s``)."""

    def __init__(self, clock: object) -> None:
        self.clock = clock if isinstance(clock, SteadyClock) else None
        self.drift = 0.0

    def jumped(self) -> float | None:
        """By how much the wall clock jumped since last asked (None: it did not, or no wall clock)."""
        if self.clock is None:
            return None
        drift = self.clock.drift()
        if abs(drift - self.drift) < JUMP:
            return None
        by, self.drift = drift - self.drift, drift
        return by
