"""The sql step reads a large script in a worker thread: the event loop keeps serving."""

from __future__ import annotations

import asyncio

from watchdogd.config.models import ServiceConfig
from watchdogd.model import Migration
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.sql import SqlStep


async def test_a_megabyte_of_down_sql_does_not_stall_the_event_loop() -> None:
    down_sql = 'DROP TABLE IF EXISTS "t";\n' * 80_000  # about 2 MB: a second or more to split
    config = ServiceConfig.model_validate({"database": {"dsn": "postgresql://app@127.0.0.1:1/app"}})
    target = RollbackTarget("api", "d1", config, migrations=(Migration("m1", down_sql),))
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = loop.time()
    try:
        assessment = await SqlStep(connect_timeout=1).assess(target)
        lines = await SqlStep().describe(target)
    finally:
        task.cancel()
    took = loop.time() - started
    assert assessment.unreachable  # nothing listens on port 1: it could not count the rows
    assert len(lines) > 80_000
    # On the loop, one gap would be the whole read; a loaded machine may stall the loop a while
    # for other reasons, never for most of the read.
    assert max(gaps) < max(0.5, took / 3), f"the event loop stalled for {max(gaps):.2f}s of {took:.2f}s"
