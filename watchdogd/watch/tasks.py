"""Named, supervised tasks.

Every background task has a name. A *service* task (the ticker, the election,
Docker events, a reload) is meant to live as long as the daemon: if one ends
or dies, the daemon is not ready (``/readyz`` answers 503 naming it) and the
log says so. A *job* (a proposal's timer, a plan running, a poll asked for
now) is meant to end; one that dies is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from watchdogd.errors import StoreError

log = structlog.get_logger("watchdogd")


class Supervisor:
    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.dead: dict[str, str] = {}
        """Service tasks that ended, with why: each makes the daemon not ready."""
        self.stopping = False

    def service(self, name: str, work: Awaitable[Any]) -> asyncio.Task[Any]:
        """A task meant to run until the daemon stops."""
        return self._spawn(name, work, service=True)

    def job(self, name: str, work: Awaitable[Any], critical: bool = False) -> asyncio.Task[Any]:
        """A task meant to end; a job of the same name already running is left to run (and returned).

        A ``critical`` job that dies (a reload) makes the daemon not ready, as a dead service task does.
        """
        running = self.tasks.get(name)
        if running is not None and not running.done():
            if asyncio.iscoroutine(work):
                work.close()
            return running
        return self._spawn(name, work, service=False, critical=critical)

    def cancel(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def named(self, prefix: str) -> list[asyncio.Task[Any]]:
        return [t for n, t in self.tasks.items() if n.startswith(prefix)]

    def cancel_prefix(self, prefix: str) -> None:
        for name in [n for n in self.tasks if n.startswith(prefix)]:
            self.cancel(name)

    def _spawn(
        self, name: str, work: Awaitable[Any], service: bool, critical: bool = False
    ) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self.tasks[name] = task
        self.dead.pop(name, None)

        def done(finished: asyncio.Task[Any]) -> None:
            if self.tasks.get(name) is finished:
                del self.tasks[name]
            if self.stopping or finished.cancelled():
                return
            error = finished.exception()
            if error is not None:
                log.error("task_died", task=name, error=repr(error), exc_info=error)
                if critical:
                    self.dead[name] = repr(error)
            if service:
                why = repr(error) if error is not None else "ended"
                self.dead[name] = why
                if error is None:
                    log.error("task_died", task=name, error=why)

        task.add_done_callback(done)
        return task

    async def stop(self, deadline: float, keep: Iterable[str] = ()) -> None:
        """Wait up to ``deadline`` for the tasks named with a prefix in ``keep``, then cancel every task."""
        self.stopping = True
        prefixes = tuple(keep)
        waiting = [t for n, t in self.tasks.items() if prefixes and n.startswith(prefixes)]
        if waiting:
            log.info("waiting_for_tasks", count=len(waiting))
            await asyncio.wait(waiting, timeout=deadline)
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)


async def every(seconds: float, work: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``work`` every ``seconds``; a failure (a store hiccup) is said once and does not end it."""
    failing = False
    while True:
        try:
            await work()
            if failing:
                log.info(f"{name}_recovered")
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.error(f"{name}_failing", error=f"{type(exc).__name__}: {exc}")
            failing = True
        await asyncio.sleep(seconds)


STORE_RETRY = 2.0
"""Seconds between two attempts at a decision the store refused to record (disk full, read-only)."""


class Health:
    """Whether the daemon is ready, and if not, why: a dead service task or a failing store."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.started = False
        self.store_problem = ""

    @property
    def problem(self) -> str:
        if self.supervisor.stopping:
            return "stopping"
        if not self.started:
            return "starting"
        dead = self.supervisor.dead
        if dead:
            return "task died: " + ", ".join(f"{name} ({why})" for name, why in sorted(dead.items()))
        return self.store_problem

    @property
    def ready(self) -> bool:
        return not self.problem

    def store_failed(self, exc: Exception) -> None:
        """Said once (log, readyz); guarding goes on from memory until the store takes writes again."""
        if self.store_problem:
            return
        self.store_problem = f"state store failing, guarding from memory: {exc}"
        log.error("store_failing", error=str(exc), guarding="from memory")

    def store_recovered(self) -> None:
        if self.store_problem:
            self.store_problem = ""
            log.info("store_recovered")

    async def until_stored(self, work: Callable[[bool], Awaitable[None]]) -> None:
        """Run ``work`` until the store takes its writes; ``work(True)`` on each retry after a refusal."""
        retry = False
        while True:
            try:
                await work(retry)
                self.store_recovered()
                return
            except StoreError as exc:
                self.store_failed(exc)
                retry = True
                await asyncio.sleep(STORE_RETRY)
