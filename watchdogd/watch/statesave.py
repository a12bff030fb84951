"""Rule states saved in rounds: every state put since the last write, in one transaction.

At fleet scale a daemon evaluates thousands of rules a second, and a commit (and
a thread hop to the store) per evaluation was most of its work. Evaluations put
their state here and go on; one writer saves what is pending, and whatever is
put while it writes goes into the next round, so the rounds grow with the load
instead of the queue. Only a rule's latest state is kept until written.

An evaluation that changes a rule's state waits for its round (``flush``)
before the change is acted on, so a proposal is never stored before the state
that made it. A store that refuses a round keeps its states pending (newer ones
win) and says so once through ``Health``; the next state put tries again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from watchdogd.errors import StoreError
from watchdogd.store import Store
from watchdogd.watch.tasks import Health

log = structlog.get_logger("watchdogd")

Key = tuple[str, str]
"""(deployment id, rule)."""


class StateSaver:
    def __init__(self, store: Store, health: Health) -> None:
        self.store = store
        self.health = health
        self._pending: dict[Key, dict[str, Any]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._put = 0
        """States put so far."""
        self._settled = 0
        """States put before the last round began: written, or refused with it."""
        self.rounds = 0
        """Rounds written: how many commits the states took."""

    def put(self, deployment_id: str, rule: str, state: dict[str, Any]) -> None:
        """Save ``state`` in the next round; a newer state of the same rule replaces it."""
        self._put += 1
        self._pending[(deployment_id, rule)] = state
        self._start()

    async def flush(self) -> None:
        """Return once every state put so far is written, or the round holding it was refused."""
        target = self._put
        while self._settled < target:
            self._start()
            if self._writer is None:
                return
            await asyncio.shield(self._writer)

    def pending(self) -> int:
        return len(self._pending)

    def _start(self) -> None:
        if self._pending and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._round(), name="rule-states")

    async def _round(self) -> None:
        batch, self._pending = self._pending, {}
        upto = self._put
        try:
            await self.store.save_rule_states([(d, r, s) for (d, r), s in batch.items()])
        except StoreError as exc:
            for key, state in batch.items():
                self._pending.setdefault(key, state)  # a newer state put meanwhile wins
            self.health.store_failed(exc)  # the states live on in memory; the next put tries again
            return
        except Exception:  # a bug must not stop every later save
            log.exception("rule_states_not_saved", states=len(batch))
            return
        else:
            self.rounds += 1
            self.health.store_recovered()
        finally:
            self._settled = upto
            self._writer = None
        self._start()  # what was put while this round was written
