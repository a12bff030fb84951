"""The reporter: one call per domain event writes its log line, audit entry,
notification, event-stream frame and metrics.

What each kind of event goes to is one table, ``SPECS``; the call sites say
only what happened. A store that refuses the audit line does not stop the
decision that caused it: the failure is handed to ``on_store_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from watchdogd.errors import StoreError
from watchdogd.model import RollbackRecord
from watchdogd.notify import Event, EventKind
from watchdogd.store import Store
from watchdogd.telemetry import Metrics

log = structlog.get_logger("watchdogd")

SYSTEM = "watchdogd"
"""The actor of automatic decisions in the audit trail."""

Listener = Callable[[str, dict[str, Any]], None]


class Notifies(Protocol):
    def notify(self, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class Spec:
    """Where one kind of event goes."""

    level: str = "info"
    log_as: str | None = None
    """The log line's event name, when it differs from the audit action."""
    notify: EventKind | None = None
    notify_dry: EventKind | None = None
    """The notification kind instead of ``notify`` when the proposal is a dry run (``mode: dry-run``)."""
    stream: str | None = None
    """The event-stream kind (``GET /v1/events``)."""
    outcome: str | None = None
    """The ``outcome`` label of ``watchdogd_rollback_proposals_total`` to count."""
    audit: bool = True


@dataclass(frozen=True, slots=True)
class Report:
    """One reported event, as observers see it."""

    kind: str
    service: str
    deployment_id: str | None
    rollback_id: str | None
    actor: str
    detail: Mapping[str, Any]
    summary: str
    spec: Spec


SPECS: dict[str, Spec] = {
    "rule_state": Spec(stream="rule_state"),
    "rule_firing": Spec(notify="rule_firing", audit=False),
    "rule_resolved": Spec(notify="rule_resolved", audit=False),
    "fire_muted": Spec(),
    "rule_blind": Spec(level="warning", notify="rule_blind", stream="rule_state"),
    "rule_sees": Spec(stream="rule_state"),
    "proposed": Spec(
        level="warning",
        log_as="rollback_proposed",
        notify="proposal",
        notify_dry="dry_run_proposal",
        stream="proposal",
        outcome="proposed",
    ),
    "reason_added": Spec(stream="proposal"),
    "plan_updated": Spec(stream="proposal"),
    "veto": Spec(level="warning", notify="veto", stream="veto", outcome="vetoed"),
    "approve": Spec(notify="approval", stream="rollback"),
    "ack": Spec(stream="rollback"),
    "expired": Spec(level="warning", notify="cancelled", stream="rollback", outcome="expired"),
    "cancelled": Spec(level="warning", notify="cancelled", stream="rollback", outcome="cancelled"),
    "dry_run": Spec(notify="dry_run", stream="rollback", outcome="dry_run"),
    "rollback_started": Spec(
        level="warning", notify="rollback_started", stream="rollback", outcome="executed"
    ),
    "rollback_succeeded": Spec(notify="rollback_succeeded", stream="rollback"),
    "rollback_failed": Spec(level="error", notify="rollback_failed", stream="rollback"),
    "retry": Spec(level="warning", notify="retry", stream="rollback"),
    "deployment": Spec(stream="deployment"),
    "deployment_completed": Spec(),
    "superseded": Spec(level="warning", stream="deployment"),
    "known_bad_image": Spec(level="warning", notify="known_bad", stream="deployment"),
    "swarm_rolled_back": Spec(level="warning", notify="swarm_rolled_back", stream="deployment"),
    "promoted": Spec(notify="promotion", stream="deployment"),
    "unverified": Spec(level="warning", notify="unverified", stream="deployment"),
    "rehearsal": Spec(),
    "frozen": Spec(level="warning", notify="freeze", stream="freeze"),
    "unfrozen": Spec(notify="unfreeze", stream="freeze"),
}


class Reporter:
    """Reports domain events; ``listeners`` receive every event-stream frame as ``(kind, data)``."""

    def __init__(
        self,
        store: Store,
        notifier: Notifies,
        metrics: Metrics,
        clock: Callable[[], float],
        on_store_error: Callable[[StoreError], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.on_store_error = on_store_error
        self.listeners: list[Listener] = []
        self.observers: list[Callable[[str, Report], None]] = []
        """Called with every report, whatever it goes to (``watchdogd.testing.RecordingReporter``)."""

    async def __call__(
        self,
        kind: str,
        *,
        service: str,
        deployment_id: str | None,
        rollback_id: str | None = None,
        actor: str = SYSTEM,
        detail: Mapping[str, Any] | None = None,
        summary: str = "",
    ) -> None:
        spec = SPECS[kind]
        detail = dict(detail or {})
        ids = {"service": service, "deployment_id": deployment_id, "rollback_id": rollback_id}
        for observer in list(self.observers):
            observer(kind, Report(kind, service, deployment_id, rollback_id, actor, detail, summary, spec))
        getattr(log, spec.level)(spec.log_as or kind, actor=actor, **ids, **detail)
        if spec.outcome is not None:
            self.metrics.rollback_proposals.labels(service, spec.outcome).inc()
        notify = spec.notify
        if spec.notify_dry is not None and detail.get("mode") == "dry-run":
            notify = spec.notify_dry
        if notify is not None and deployment_id is not None:
            event = Event(
                kind=notify,
                service=service,
                deployment_id=deployment_id,
                rollback_id=rollback_id,
                at=self.clock(),
                summary=summary or f"{kind.replace('_', ' ')}: {service}",
                fields={"actor": actor, **detail} if actor != SYSTEM else detail,
            )
            self.notifier.notify(event)
        if spec.stream is not None:
            frame = {**{k: v for k, v in ids.items() if v is not None}, **detail}
            if actor != SYSTEM:
                frame["actor"] = actor
            for listener in list(self.listeners):
                try:
                    listener(spec.stream, frame)
                except Exception as exc:  # a broken subscriber must not stop the report
                    log.warning("listener_failed", error=repr(exc))
        if spec.audit:
            try:
                await self.store.audit(actor, kind, detail, deployment_id, rollback_id)
            except StoreError as exc:
                self.on_store_error(exc)  # a missing audit line must not stop the decision

    async def about(
        self,
        kind: str,
        record: RollbackRecord,
        *,
        actor: str = SYSTEM,
        detail: Mapping[str, Any] | None = None,
        summary: str = "",
    ) -> None:
        """Report an event about a rollback: its service, deployment and id come from ``record``."""
        await self(
            kind,
            service=record.service,
            deployment_id=record.deployment_id,
            rollback_id=record.id,
            actor=actor,
            detail=detail,
            summary=summary,
        )
