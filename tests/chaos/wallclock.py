"""``watchdogd`` with a wall clock the test can step: ``python -m tests.chaos.wallclock run ...``.

Stepping the machine's clock would disturb every other process on it, so this
shifts the wall clock of one process only: ``time.time`` and the ``datetime.now``
the scheduler plans with read an offset (seconds) from the file named by
``WALL_OFFSET_FILE``. The monotonic clock is left alone, as a real step leaves it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import runpy
import time
from pathlib import Path

OFFSET_FILE = "WALL_OFFSET_FILE"

_real_time = time.time
_cache: list[float] = [0.0, -1.0]  # offset, when it was read (monotonic)


def offset() -> float:
    now = time.monotonic()
    if now - _cache[1] > 0.1:
        with contextlib.suppress(OSError, ValueError, KeyError):
            _cache[0] = float(Path(os.environ[OFFSET_FILE]).read_text().strip() or 0)
        _cache[1] = now
    return _cache[0]


def shifted_time() -> float:
    return _real_time() + offset()


class ShiftedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> ShiftedDatetime:
        return cls.fromtimestamp(shifted_time(), tz)


def install() -> None:
    time.time = shifted_time
    import apscheduler.executors.base
    import apscheduler.schedulers.base

    import watchdogd.sources.schedule

    for module in (apscheduler.schedulers.base, apscheduler.executors.base, watchdogd.sources.schedule):
        module.datetime = ShiftedDatetime  # type: ignore[attr-defined]


if __name__ == "__main__":
    install()
    runpy.run_module("watchdogd", run_name="__main__", alter_sys=True)
