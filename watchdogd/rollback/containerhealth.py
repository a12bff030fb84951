"""The wait until a recreated container is healthy, and the last logs quoted when it is not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from watchdogd.config.models import ContainerStepConfig
from watchdogd.rollback import kept
from watchdogd.rollback.recreate import parse_time

Probe = Callable[[], Awaitable[bool]]
"""The service's health probe: True when the service answers as healthy."""

POLL_INTERVAL = 0.1
"""How often container state is read while waiting: short, the inspect is cheap."""
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000
"""Bound on the logs quoted in a failure, so a chatty container cannot flood the journal."""


async def wait_healthy(
    api: Any, probe: Probe | None, container_id: str, settings: ContainerStepConfig
) -> tuple[bool, str]:
    """Healthy by its Docker healthcheck, else the probe, else running ``settle`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.healthy_timeout
    last = "no check yet"
    while True:
        attrs = await kept.inspect(api, container_id)
        if attrs is None:
            return False, "the container was removed"
        state = attrs["State"]
        if not state.get("Running") or state.get("Restarting"):
            return (
                False,
                f"it exited with code {state.get('ExitCode')} {state.get('Error') or ''}".strip(),
            )
        health = state.get("Health")
        if health is not None:
            status = health.get("Status")
            if status == "healthy":
                return True, "healthcheck healthy"
            if status == "unhealthy":
                output = ((health.get("Log") or [{}])[-1].get("Output") or "").strip()
                return False, f"its healthcheck is unhealthy: {output[:200]}"
            last = f"healthcheck {status}"
        elif probe is not None:
            remaining = max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(remaining):
                    if await probe():
                        return True, "health probe passed"
                last = "health probe failed"
            except TimeoutError:
                last = "health probe did not answer"
            except Exception as exc:  # the probe is the caller's code; its failure is a "no"
                last = f"health probe raised {type(exc).__name__}: {exc}"
        else:
            up = (datetime.now(UTC) - parse_time(state.get("StartedAt", ""))).total_seconds()
            if up >= settings.settle:
                return True, f"running for {settings.settle:g}s"
            last = f"running for {up:.1f}s of {settings.settle:g}s"
        if loop.time() >= deadline:
            return False, f"not healthy within {settings.healthy_timeout:g}s ({last})"
        await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))


async def tail(api: Any, container_id: str) -> str:
    """The container's last log lines, bounded."""
    raw = await asyncio.to_thread(api.logs, container_id, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
    text = bytes(raw).decode("utf-8", "replace").strip()
    return text[-LOG_TAIL_CHARS:]
