"""Rule states saved in rounds: many evaluations, one commit; a refused round loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from watchdogd.errors import StoreError
from watchdogd.store import Store
from watchdogd.testing import FakeClock, memory_store
from watchdogd.watch.statesave import StateSaver
from watchdogd.watch.tasks import Health, Supervisor


class Flaky:
    """The store, refusing rounds while ``down``; counts the rounds it was asked to save."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.calls = 0

    async def save_rule_states(self, states: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.calls += 1
        await asyncio.sleep(0.01)  # a commit takes time: states put meanwhile wait for the next round
        if self.down:
            raise StoreError("state store: disk I/O error")
        await self.store.save_rule_states(states)


async def _saver() -> tuple[StateSaver, Flaky, Health]:
    flaky = Flaky(await memory_store(FakeClock()))
    health = Health(Supervisor())
    health.started = True
    return StateSaver(flaky, health), flaky, health  # type: ignore[arg-type]


async def test_states_put_while_a_round_is_written_go_together_into_the_next() -> None:
    saver, flaky, _ = await _saver()
    saver.put("d1", "r0", {"state": "ok", "n": 0})
    await asyncio.sleep(0)  # the first round starts with one state
    for n in range(1, 500):
        saver.put("d1", f"r{n % 50}", {"state": "ok", "n": n})  # 50 rules, each evaluated ten times
    await saver.flush()
    assert flaky.calls == 2 and saver.rounds == 2
    saved = await flaky.store.rule_states("d1")
    assert len(saved) == 50
    assert saved["r49"] == {"state": "ok", "n": 499}  # the latest state of each rule


async def test_a_refused_round_keeps_its_states_and_the_next_put_saves_them() -> None:
    saver, flaky, health = await _saver()
    flaky.down = True
    saver.put("d1", "errors", {"state": "firing"})
    saver.put("d1", "latency", {"state": "ok"})
    await saver.flush()
    assert "state store failing" in health.problem
    assert saver.pending() == 2 and await flaky.store.rule_states("d1") == {}
    flaky.down = False
    saver.put("d1", "latency", {"state": "pending"})  # newer than the one kept
    await saver.flush()
    saved = await flaky.store.rule_states("d1")
    assert saved == {"errors": {"state": "firing"}, "latency": {"state": "pending"}}
    assert saver.pending() == 0 and health.problem == ""


async def test_flush_returns_once_its_own_states_are_written_under_a_steady_load() -> None:
    saver, flaky, _ = await _saver()

    async def load() -> None:
        for n in range(200):
            saver.put("d2", f"r{n % 7}", {"n": n})
            await asyncio.sleep(0.001)

    running = asyncio.create_task(load())
    saver.put("d1", "errors", {"state": "firing"})
    await asyncio.wait_for(saver.flush(), 1.0)  # does not wait for the load to stop
    assert (await flaky.store.rule_states("d1")) == {"errors": {"state": "firing"}}
    assert not running.done()
    await running
    await saver.flush()
