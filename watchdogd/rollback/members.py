"""A group member's step: the member's own step, run on the member's own target.

A group's plan runs every member's steps in one journal; each is bound here to
the deployment it undoes, whatever target the executor hands the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from watchdogd.rollback.base import RollbackTarget, Step, StepResult


@dataclass(slots=True)
class MemberStep:
    name: str
    """``SERVICE/STEP``, as the group's plan names it."""
    step: Step
    target: RollbackTarget

    async def run(self, target: RollbackTarget) -> StepResult:
        return await self.step.run(self.target)

    async def describe(self, target: RollbackTarget) -> list[str]:
        return await self.step.describe(self.target)
