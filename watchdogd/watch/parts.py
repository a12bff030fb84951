"""What the parts of ``Deployments`` work with, built once and handed to each part.

``Registrar``, ``Noticed``, ``Windows`` and ``Succession`` share the daemon's store,
reporter, world, watched deployments, proposer, containers, metrics, clock and the
leader check; ``Part`` gives a part each of them as its own attribute, and
``Serialized`` also the lock, history and succession of the two that change
deployments one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watchdogd.clock import Clock
from watchdogd.store import Store
from watchdogd.telemetry import Metrics
from watchdogd.watch.containers import Containers
from watchdogd.watch.live import Watched
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.report import Reporter
from watchdogd.watch.world import World

if TYPE_CHECKING:
    from watchdogd.watch.history import History
    from watchdogd.watch.succession import Succession


@dataclass(frozen=True, kw_only=True, slots=True)
class Shared:
    store: Store
    report: Reporter
    world: Callable[[], World]
    watched: Watched
    proposer: Proposer
    containers: Containers
    metrics: Metrics
    clock: Clock
    leading: Callable[[], bool]


class Part:
    """A part of ``Deployments``: what they share, as its own attributes."""

    def __init__(self, shared: Shared) -> None:
        self.store = shared.store
        self.report = shared.report
        self.world = shared.world
        self.watched = shared.watched
        self.proposer = shared.proposer
        self.containers = shared.containers
        self.metrics = shared.metrics
        self.clock = shared.clock
        self.leading = shared.leading


class Serialized(Part):
    """A part that changes deployments under the lock registrations and Docker notices share."""

    def __init__(
        self, shared: Shared, *, lock: asyncio.Lock, history: History, succession: Succession
    ) -> None:
        super().__init__(shared)
        self.lock = lock
        self.history = history
        self.succession = succession
