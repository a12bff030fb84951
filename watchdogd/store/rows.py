"""Rows to records and records to columns: the same for both databases.

Columns are read by position, in the order of the ``*_COLUMNS`` lists. JSON
is kept as text, so NaN, key order and floats come back as they were written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from watchdogd.model import (
    AuditEntry,
    Deployment,
    DeploymentFacts,
    DeploymentState,
    Reason,
    RollbackRecord,
    RollbackState,
    StepRecord,
    StepState,
)

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


def audit_detail(detail: dict[str, Any]) -> str:
    """Audit details may hold anything (sets, times, paths): what JSON lacks is written as text."""
    return json.dumps(detail, default=str)


def reasons_json(reasons: Iterable[Reason]) -> str:
    return json.dumps([reason.to_json() for reason in reasons])


def facts_json(facts: DeploymentFacts) -> str:
    return json.dumps(facts.to_json())


def step(row: Row) -> StepRecord:
    """A ``STEP_COLUMNS`` row (its first column, the rollback, is the caller's)."""
    return StepRecord(
        position=row[1],
        name=row[2],
        state=StepState(row[3]),
        attempts=row[4],
        started_at=row[5],
        finished_at=row[6],
        error=row[7],
        detail=row[8],
    )


def rollbacks(rows: Iterable[Row], step_rows: Iterable[Row]) -> list[RollbackRecord]:
    """``ROLLBACK_COLUMNS`` rows, each with its steps taken from ``STEP_COLUMNS`` rows in position order."""
    steps: dict[str, list[StepRecord]] = {}
    for row in step_rows:
        steps.setdefault(row[0], []).append(step(row))
    return [
        RollbackRecord(
            id=row[0],
            deployment_id=row[1],
            service=row[2],
            state=RollbackState(row[3]),
            reasons=tuple(Reason.from_json(reason) for reason in json.loads(row[4])),
            target=json.loads(row[5]),
            proposed_at=row[6],
            execute_at=row[7],
            started_at=row[8],
            finished_at=row[9],
            error=row[10],
            steps=tuple(steps.get(row[0], ())),
        )
        for row in rows
    ]


def deployment(row: Row) -> Deployment:
    return Deployment(
        id=row[0],
        service=row[1],
        image=row[2],
        previous_image=row[3],
        state=DeploymentState(row[4]),
        started_at=row[5],
        window_ends_at=row[6],
        finished_at=row[7],
        facts=DeploymentFacts.from_json(json.loads(row[8])),
    )


def audit_entry(row: Row) -> AuditEntry:
    return AuditEntry(
        seq=row[0],
        at=row[1],
        actor=row[2],
        action=row[3],
        deployment_id=row[4],
        rollback_id=row[5],
        detail=json.loads(row[6]),
    )
