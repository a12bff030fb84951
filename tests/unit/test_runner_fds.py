"""Running out of descriptors: the budget keeps an accept burst back, and the log stays quiet."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
from typing import Any

from watchdogd.auth import Rejections
from watchdogd.connections import ACCEPT_BACKLOG, RESERVED_FDS, fd_budget
from watchdogd.runner import _quiet_when_out_of_files


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_the_budget_keeps_back_a_whole_accept_burst() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    # asyncio accepts up to the backlog in one go before any connection can be closed
    assert fd_budget(10**9) <= soft - in_use - RESERVED_FDS - ACCEPT_BACKLOG + 1


def test_out_of_descriptors_is_one_line_per_interval_not_a_traceback_per_retry() -> None:
    logger = Lines()
    now = [0.0]
    handle = _quiet_when_out_of_files(Rejections(logger, interval=10.0, clock=lambda: now[0]))
    loop = asyncio.new_event_loop()
    defaults: list[dict[str, Any]] = []
    loop.default_exception_handler = defaults.append  # type: ignore[method-assign]
    try:
        for second in range(30):
            now[0] = float(second)
            handle(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                },
            )
        handle(loop, {"message": "something else", "exception": ValueError("bug")})
    finally:
        loop.close()
    assert [fields["kind"] for _, fields in logger.lines] == ["out_of_descriptors"] * 3
    assert [c["message"] for c in defaults] == ["something else"]  # the rest still reaches asyncio's handler
