"""What every rollback step shares: what it is given and what it answers.

A step is idempotent: run twice (after a crash between its start and its
journal entry), it finds its work done and says so. It never raises for a
failure it can explain; it returns a failed result with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from watchdogd.config.models import ServiceConfig
from watchdogd.model import ContainerSnapshot, Migration, Reason

__all__ = ["ContainerSnapshot", "Migration", "RollbackTarget", "Step", "StepResult", "StepStatus"]

StepStatus = Literal["done", "already_done", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class RollbackTarget:
    """What a rollback returns to: the deployment it undoes and what came before it."""

    service: str
    deployment_id: str
    config: ServiceConfig
    previous: ContainerSnapshot | None = None
    """The container as it was before the deploy (previous image)."""
    current: ContainerSnapshot | None = None
    """The bad container as deployed."""
    migrations: tuple[Migration, ...] = ()
    fired_rules: tuple[str, ...] = ()
    reason: str = ""
    approved_by: str | None = None
    """The operator who approved or retried this rollback (None: it runs on its own): the sql step
    runs SQL whose assessment at execution needs approval only when one did."""
    image: str | None = None
    """The image the deployment brought, as registered (also when the service has no container)."""
    previous_image: str | None = None
    """The image it replaced, as registered."""
    rollback_id: str | None = None
    """The rollback this target belongs to; set when its plan runs."""
    reasons: tuple[Reason, ...] = ()
    """Why the rollback was proposed, one reason each (``reason`` is them in one line)."""


@dataclass(frozen=True, slots=True)
class StepResult:
    status: StepStatus
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class Step(Protocol):
    """One step of a plan: ``run`` does the work, ``describe`` says what it would do (dry-run)."""

    name: str

    async def run(self, target: RollbackTarget) -> StepResult: ...

    async def describe(self, target: RollbackTarget) -> list[str]: ...
