"""What the API answers with: the JSON shapes of deployments, rollbacks and backups, and its
times (RFC 3339, UTC, ``Z``). Plain functions of the records; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watchdogd.decisions import group_of_record, group_outcomes
from watchdogd.model import Deployment, RollbackRecord, jsonable_number
from watchdogd.watch.live import RuleView

if TYPE_CHECKING:
    from watchdogd.rollback.backups import Backup


def time_json(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def deployment_json(deployment: Deployment, views: list[RuleView]) -> dict[str, Any]:
    """``views``: its rules as they stand."""
    return {
        "id": deployment.id,
        "service": deployment.service,
        "image": deployment.image,
        "previous_image": deployment.previous_image,
        "state": deployment.state,
        "started_at": time_json(deployment.started_at),
        "window_ends_at": time_json(deployment.window_ends_at),
        "finished_at": time_json(deployment.finished_at),
        "migrations": [m.id for m in deployment.facts.migrations],
        "backup_id": deployment.facts.backup_id,
        "known_bad": deployment.facts.known_bad,
        "rules": [
            {
                "name": v.name,
                "state": v.state.value,
                "value": jsonable_number(v.value),
                "since": time_json(v.since),
                "reason": v.reason,
            }
            for v in views
        ],
    }


def rollback_json(record: RollbackRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "deployment_id": record.deployment_id,
        "service": record.service,
        "state": record.state,
        "reasons": [r.to_json() for r in record.reasons],
        "proposed_at": time_json(record.proposed_at),
        "execute_at": time_json(record.execute_at),
        "started_at": time_json(record.started_at),
        "finished_at": time_json(record.finished_at),
        "error": record.error,
        "steps": [
            {
                "name": s.name,
                "state": s.state,
                "started_at": time_json(s.started_at),
                "finished_at": time_json(s.finished_at),
                "error": s.error,
                "detail": s.detail,
                "attempts": s.attempts,
            }
            for s in record.steps
        ],
        **_group(record),
    }


def _group(record: RollbackRecord) -> dict[str, Any]:
    """A group's rollback: its members, in order, and which are back (nothing for one service's)."""
    group = group_of_record(record)
    if group is None:
        return {}
    ids = {str(m["service"]): m.get("deployment_id") for m in group.get("members") or ()}
    members = [
        {"service": o.service, "deployment_id": ids.get(o.service), "state": o.state, "why": o.why or None}
        for o in group_outcomes(record)
    ]
    return {"group": {"name": group.get("name"), "members": members}}


def backup_json(backup: Backup) -> dict[str, Any]:
    return {
        "backup_id": backup.id,
        "service": backup.service,
        "database": backup.database,
        "created_at": time_json(backup.created_at),
        "size": backup.size,
        "sha256": backup.sha256,
        "tables": backup.tables,
        "server_version": backup.server_version,
        "by": backup.by,
        "seconds": backup.seconds,
    }
