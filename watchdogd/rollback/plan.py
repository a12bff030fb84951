"""Running a rollback plan exactly once: journal, step, journal, next.

For each step in the service's order: the journal says ``running`` before it
starts and ``done`` (or ``failed``) after. A restarted watchdogd resumes every
rollback still ``executing``: steps recorded done are skipped, the one that
was running runs again (it is idempotent and finds its work done), the rest
follow. A failed step ends the plan: the rollback is ``failed`` with the step
and its reason, and nothing after it runs.

``WATCHDOGD_FAULT`` names a step boundary (``before:sql``, ``after:container``)
at which the process exits at once, as a kill would: the crash tests use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import structlog

from watchdogd.config.models import ServiceConfig
from watchdogd.model import PROPOSED_STATES, Reason, RollbackRecord, RollbackState, StepState
from watchdogd.rollback.base import ContainerSnapshot, Migration, RollbackTarget, Step, StepResult
from watchdogd.store.protocol import RollbackJournal
from watchdogd.telemetry import Metrics

log = structlog.get_logger("watchdogd.rollback")

FAULT_ENV = "WATCHDOGD_FAULT"
FAULT_EXIT = 86


def fault_point(boundary: str) -> None:
    """Exit at once, with no cleanup, when ``WATCHDOGD_FAULT`` names this boundary."""
    if os.environ.get(FAULT_ENV) == boundary:
        os._exit(FAULT_EXIT)


def target_to_json(target: RollbackTarget) -> dict[str, Any]:
    """The target without its config (the config is the service's, found again on resume)."""
    data = {key: value for key, value in asdict(target).items() if key != "config"}
    data["migrations"] = [asdict(m) for m in target.migrations]
    data["reasons"] = [r.to_json() for r in target.reasons]
    return data


def target_from_json(data: Mapping[str, Any], config: ServiceConfig) -> RollbackTarget:
    def snapshot(raw: Any) -> ContainerSnapshot | None:
        return ContainerSnapshot.from_json(raw)

    return RollbackTarget(
        service=data["service"],
        deployment_id=data["deployment_id"],
        config=config,
        previous=snapshot(data.get("previous")),
        current=snapshot(data.get("current")),
        migrations=tuple(
            Migration(m["id"], m["down_sql"], tuple(m.get("verify", ()))) for m in data.get("migrations", ())
        ),
        fired_rules=tuple(data.get("fired_rules", ())),
        reason=data.get("reason", ""),
        image=data.get("image"),
        previous_image=data.get("previous_image"),
        rollback_id=data.get("rollback_id"),
        reasons=tuple(Reason.from_json(r) for r in data.get("reasons") or ()),
    )


class Executor:
    """Executes and resumes plans; ``steps`` maps a step name to the step that does it."""

    def __init__(
        self, journal: RollbackJournal, steps: Mapping[str, Step], metrics: Metrics | None = None
    ) -> None:
        self.journal = journal
        self.steps = steps
        self.metrics = metrics

    async def execute(self, record: RollbackRecord, target: RollbackTarget) -> RollbackRecord:
        """Run (or resume) ``record``'s plan; returns the record as it ended."""
        if record.state is not RollbackState.EXECUTING:
            moved = await self.journal.transition(record.id, RollbackState.EXECUTING, PROPOSED_STATES)
            if not moved:
                current = await self.journal.get(record.id)
                assert current is not None
                if current.state is not RollbackState.EXECUTING:
                    return current  # vetoed, or finished by another
        started = time.monotonic()
        log.info(
            "rollback_executing", rollback=record.id, service=target.service, deployment=target.deployment_id
        )
        for step_record in record.steps:
            if step_record.state in (StepState.DONE, StepState.SKIPPED):
                continue
            step = self.steps.get(step_record.name)
            if step is None:
                result = StepResult("failed", f"no '{step_record.name}' step is configured for this service")
            else:
                await self.journal.step_started(record.id, step_record.position)
                fault_point(f"before:{step_record.name}")
                result = await self._run(step, target)
                fault_point(f"after:{step_record.name}")
            state = (
                StepState.FAILED
                if not result.ok
                else StepState.SKIPPED
                if result.status == "skipped"
                else StepState.DONE
            )
            await self.journal.step_finished(
                record.id,
                step_record.position,
                state,
                result.detail,
                result.detail if not result.ok else None,
            )
            log.info(
                "rollback_step",
                rollback=record.id,
                step=step_record.name,
                status=result.status,
                detail=result.detail,
            )
            if not result.ok:
                error = f"step {step_record.name} failed: {result.detail}"
                await self.journal.transition(
                    record.id, RollbackState.FAILED, (RollbackState.EXECUTING,), error=error
                )
                self._count(target.service, "failed")
                log.error("rollback_failed", rollback=record.id, error=error)
                return await self._reload(record.id)
        await self.journal.transition(record.id, RollbackState.SUCCEEDED, (RollbackState.EXECUTING,))
        self._count(target.service, "succeeded")
        log.info("rollback_succeeded", rollback=record.id, seconds=round(time.monotonic() - started, 3))
        return await self._reload(record.id)

    async def _run(self, step: Step, target: RollbackTarget) -> StepResult:
        started = time.monotonic()
        try:
            result = await step.run(target)
        except Exception as exc:  # a step that raises has failed; the plan says so and stops
            log.exception("rollback_step_crashed", step=step.name)
            result = StepResult("failed", f"internal error: {type(exc).__name__}: {exc}")
        if self.metrics is not None:
            self.metrics.rollback_step_duration.labels(target.service, step.name).observe(
                time.monotonic() - started
            )
        return result

    def _count(self, service: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.rollbacks.labels(service, outcome).inc()

    async def _reload(self, rollback_id: str) -> RollbackRecord:
        record = await self.journal.get(rollback_id)
        assert record is not None
        return record

    async def describe(self, target: RollbackTarget, order: tuple[str, ...]) -> list[str]:
        """What the plan would do, step by step (dry-run)."""
        lines: list[str] = []
        for number, name in enumerate(order, start=1):
            step = self.steps.get(name)
            if step is None:
                lines.append(f"{number}. {name}: not configured")
                continue
            lines.append(f"{number}. {name}:")
            lines.extend(f"   {line}" for line in await step.describe(target))
        return lines
