"""What the daemon, the API and the executor ask of the state store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from watchdogd.model import (
    AuditEntry,
    Deployment,
    DeploymentFacts,
    DeploymentState,
    Reason,
    RollbackRecord,
    RollbackState,
    StepState,
)
from watchdogd.store.actions import CommandRun, Freeze


class RollbackJournal(Protocol):
    """What the executor needs to run and resume a plan."""

    async def transition(
        self,
        rollback_id: str,
        to: RollbackState,
        allowed_from: Sequence[RollbackState],
        error: str | None = None,
    ) -> bool:
        """Move to ``to`` only from one of ``allowed_from``: of two racing moves, one sees True.

        ``executing`` stamps ``started_at`` once and clears ``finished_at`` and
        ``error`` (a retry of a ``failed`` one); a final state stamps ``finished_at``.
        """
        ...

    async def step_started(self, rollback_id: str, position: int) -> None:
        """The step is ``running``: one more attempt, its error cleared, its first start kept."""
        ...

    async def step_finished(
        self, rollback_id: str, position: int, state: StepState, detail: str, error: str | None = None
    ) -> None: ...

    async def get(self, rollback_id: str) -> RollbackRecord | None: ...


class Store(RollbackJournal, Protocol):
    """Everything a restart needs: rollbacks and their steps, deployments, rule states, mutes, audit.

    Times are float seconds of ``clock``. ``close()`` releases the store at
    once; ``aclose()`` lets in-flight calls finish first.
    """

    clock: Callable[[], float]

    def close(self) -> None: ...

    async def aclose(self) -> None: ...

    # --- rollbacks ---

    async def propose(
        self,
        deployment_id: str,
        service: str,
        steps: Sequence[str],
        reason: Reason,
        target: dict[str, Any],
        state: RollbackState,
        execute_at: float | None,
    ) -> tuple[RollbackRecord, bool]:
        """A new proposal with its steps, True; or the deployment's open one, False.

        An open proposal (pending or awaiting approval) is joined in the same
        transaction: ``reason`` is added unless its rule is there already, and
        ``execute_at`` becomes the earlier of the two (a proposal without one
        keeps none). An executing rollback is returned as it is.
        """
        ...

    async def update_target(
        self, rollback_id: str, target: dict[str, Any], allowed_from: Sequence[RollbackState]
    ) -> bool: ...

    async def latest_for(self, deployment_id: str) -> RollbackRecord | None:
        """The deployment's newest rollback."""
        ...

    async def for_deployment(self, deployment_id: str) -> list[RollbackRecord]:
        """The deployment's rollbacks, oldest first."""
        ...

    async def unfinished(self) -> list[RollbackRecord]:
        """Rollbacks that were executing when the process stopped: to be resumed."""
        ...

    async def in_states(self, states: Sequence[RollbackState]) -> list[RollbackRecord]:
        """Rollbacks in any of ``states``, oldest first."""
        ...

    async def rollbacks(self, limit: int = 200) -> list[RollbackRecord]:
        """All rollbacks, newest first."""
        ...

    async def cancel_proposed(self, deployment_id: str, error: str) -> list[RollbackRecord]:
        """The deployment's open proposals become ``cancelled`` with ``error``; those are returned."""
        ...

    # --- deployments ---

    async def add_deployment(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        started_at: float,
        window: float,
        facts: DeploymentFacts,
        idempotency_key: str | None = None,
    ) -> tuple[Deployment, list[Deployment]]:
        """A new ``watching`` deployment, and the service's ones it superseded (as they are now).

        In one transaction: a key seen before answers that deployment and
        changes nothing; otherwise the service's watching deployments become
        ``superseded`` and their open proposals ``cancelled``.
        """
        ...

    async def deployment_for_key(self, idempotency_key: str) -> Deployment | None: ...

    async def update_facts(self, deployment_id: str, facts: DeploymentFacts) -> None: ...

    async def set_deployment_state(
        self, deployment_id: str, state: DeploymentState, allowed_from: Sequence[DeploymentState]
    ) -> bool:
        """Conditional as ``transition``: a final state stamps ``finished_at``, rolling_back clears it."""
        ...

    async def deployment(self, deployment_id: str) -> Deployment | None: ...

    async def deployments(
        self, open_only: bool = False, limit: int = 200, service: str | None = None
    ) -> list[Deployment]:
        """Newest first; ``open_only``: every watching or rolling back one (no limit); ``service``:
        that service's only."""
        ...

    # --- freezes and command runs ---

    async def freeze(
        self, service: str, reason: str, until: float, by: str, rollback_id: str | None = None
    ) -> Freeze:
        """Freeze ``service`` until ``until`` (a rollback's freeze keeps an operator's longer one)."""
        ...

    async def unfreeze(self, service: str) -> Freeze | None:
        """Lift the freeze; the one lifted, None when none was in force."""
        ...

    async def freezes(self) -> list[Freeze]:
        """The freezes in force, soonest to end first."""
        ...

    async def frozen(self, service: str) -> Freeze | None: ...

    async def command_run(self, deployment_id: str, step: str) -> CommandRun | None: ...

    async def command_started(self, deployment_id: str, step: str) -> None: ...

    async def command_ended(
        self, deployment_id: str, step: str, state: str, exit_code: int | None, detail: str
    ) -> None: ...

    # --- rule states, mutes, audit ---

    async def save_rule_state(self, deployment_id: str, rule: str, state: dict[str, Any]) -> None: ...

    async def save_rule_states(self, states: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """``(deployment_id, rule, state)`` saved in one transaction: the states of a round of polls."""
        ...

    async def rule_states(self, deployment_id: str) -> dict[str, dict[str, Any]]: ...

    async def mute(self, service: str, rule: str, until: float) -> None:
        """Mute until the later of the current end and ``until`` (``math.inf``: until the rule clears)."""
        ...

    async def muted_until(self, service: str, rule: str) -> float | None: ...

    async def unmute(self, service: str, rule: str, *, until_clear_only: bool = False) -> bool:
        """Remove the mute (with ``until_clear_only``, only one that lasts until the rule clears).

        True when one was removed.
        """
        ...

    async def mutes(self) -> dict[tuple[str, str], float]:
        """Every mute: ``(service, rule)`` -> its end."""
        ...

    async def audit(
        self,
        actor: str,
        action: str,
        detail: dict[str, Any],
        deployment_id: str | None = None,
        rollback_id: str | None = None,
    ) -> None: ...

    async def audit_entries(
        self,
        deployment_id: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 500,
        before: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first (by ``seq``), filtered by what is given; ``before``: only ``seq`` below it."""
        ...
