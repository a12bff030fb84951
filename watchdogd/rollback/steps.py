"""The verify step; webhook has its own module, re-exported here (redis_purge has its own
module too, imported from there: it brings the redis client).

Each is idempotent: a webhook receiver gets an idempotency key so a repeated
call after a crash is recognisable, and verifying twice only checks twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from watchdogd.config.models import VerifyStepConfig
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.webhook import WebhookStep

__all__ = ["Check", "VerifyStep", "WebhookStep"]

Check = Callable[[RollbackTarget], Awaitable[tuple[bool | None, str]]]
"""An async check: (passed, what it saw); None: nothing to judge by yet (it does not fail the step)."""


class VerifyStep:
    """The health probe passes and the rules that fired are back to ok, within the timeout."""

    name = "verify"

    def __init__(
        self, config: VerifyStepConfig, health: Check | None, rules: Check | None, poll: float = 1.0
    ) -> None:
        self.config = config
        self.health = health
        self.rules = rules
        self.poll = poll

    async def run(self, target: RollbackTarget) -> StepResult:
        checks = [(what, check) for what, check in (("health", self.health), ("rules", self.rules)) if check]
        if not checks:
            return StepResult("skipped", "nothing to verify: no health probe and no rule fired")
        deadline = time.monotonic() + self.config.timeout
        seen: dict[str, str] = {}
        while True:
            verdicts: list[bool | None] = []
            for what, check in checks:
                try:
                    ok, saw = await check(target)
                except Exception as exc:  # a check that breaks is a check that did not pass
                    ok, saw = False, f"{type(exc).__name__}: {exc}"
                seen[what] = saw
                verdicts.append(ok)
            said = "; ".join(f"{k}: {v}" for k, v in seen.items())
            if all(v is True for v in verdicts):
                return StepResult("done", said)
            if time.monotonic() >= deadline:
                if False not in verdicts:  # nothing failed; what could not be judged is named
                    return StepResult("done", said)
                return StepResult("failed", f"not verified within {self.config.timeout:g}s: {said}")
            await asyncio.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))

    async def describe(self, target: RollbackTarget) -> list[str]:
        parts = []
        if self.health:
            parts.append("the health probe passes")
        if self.rules:
            parts.append(f"rules {', '.join(target.fired_rules) or '(none fired)'} are back to ok")
        return [
            f"wait up to {self.config.timeout:g}s until " + (" and ".join(parts) or "nothing (no checks)")
        ]
