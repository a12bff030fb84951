"""Rows to records and records to rows: the same for both databases.

Columns are listed once (``*_COLUMNS``), in the order of the records' fields,
and read by position. JSON is kept as text, so NaN, key order and floats come
back as they were written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from watchdogd import model

Row = Sequence[Any]

ROLLBACK_COLUMNS = (
    "id, deployment_id, service, state, reasons, target, proposed_at, execute_at, started_at,"
    " finished_at, error"
)
STEP_COLUMNS = "rollback_id, position, name, state, attempts, started_at, finished_at, error, detail"
DEPLOYMENT_COLUMNS = (
    "id, service, image, previous_image, state, started_at, window_ends_at, finished_at, data"
)
AUDIT_COLUMNS = "seq, at, actor, action, deployment_id, rollback_id, detail"


def dumps(value: Any) -> str:
    return json.dumps(value)


def loads(text: str) -> Any:
    return json.loads(text)


def audit_detail(detail: dict[str, Any]) -> str:
    """Audit details may hold anything (sets, times, paths): what JSON lacks is written as text."""
    return json.dumps(detail, default=str)


def reasons_json(reasons: Iterable[model.Reason]) -> str:
    return json.dumps([reason.to_json() for reason in reasons])


def facts_json(facts: model.DeploymentFacts) -> str:
    return json.dumps(facts.to_json())


def rollback_row(record: model.RollbackRecord) -> tuple[Any, ...]:
    """The ``ROLLBACK_COLUMNS`` of ``record`` (its steps go to ``step_row``)."""
    return (
        record.id,
        record.deployment_id,
        record.service,
        str(record.state),
        reasons_json(record.reasons),
        dumps(record.target),
        record.proposed_at,
        record.execute_at,
        record.started_at,
        record.finished_at,
        record.error,
    )


def step_row(rollback_id: str, step: model.StepRecord) -> tuple[Any, ...]:
    """The ``STEP_COLUMNS`` of one step of rollback ``rollback_id``."""
    return (
        rollback_id,
        step.position,
        step.name,
        str(step.state),
        step.attempts,
        step.started_at,
        step.finished_at,
        step.error,
        step.detail,
    )


def deployment_row(deployment: model.Deployment) -> tuple[Any, ...]:
    """The ``DEPLOYMENT_COLUMNS`` of ``deployment``."""
    return (
        deployment.id,
        deployment.service,
        deployment.image,
        deployment.previous_image,
        str(deployment.state),
        deployment.started_at,
        deployment.window_ends_at,
        deployment.finished_at,
        facts_json(deployment.facts),
    )


def rollbacks(found: Iterable[Row], step_rows: Iterable[Row]) -> list[model.RollbackRecord]:
    """``ROLLBACK_COLUMNS`` rows, each given its ``STEP_COLUMNS`` rows (in position order)."""
    steps: dict[str, list[model.StepRecord]] = {}
    for r in step_rows:
        step = model.StepRecord(r[1], r[2], model.StepState(r[3]), r[4], r[5], r[6], r[7], r[8])
        steps.setdefault(r[0], []).append(step)
    return [
        model.RollbackRecord(
            *(r[0], r[1], r[2], model.RollbackState(r[3])),
            tuple(model.Reason.from_json(reason) for reason in json.loads(r[4])),
            json.loads(r[5]),
            *(r[6], r[7], r[8], r[9], r[10]),
            tuple(steps.get(r[0], ())),
        )
        for r in found
    ]


def deployment(r: Row) -> model.Deployment:
    """A ``DEPLOYMENT_COLUMNS`` row; ``data`` holds the facts (rows of version 1 too)."""
    facts = model.DeploymentFacts.from_json(json.loads(r[8]))
    return model.Deployment(r[0], r[1], r[2], r[3], model.DeploymentState(r[4]), r[5], r[6], r[7], facts)


def audit_entry(r: Row) -> model.AuditEntry:
    return model.AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))
