"""Notifications: what watchdogd decided and did, POSTed to the configured webhooks.

``Notifier.notify`` never blocks and never raises: it puts the event on one
bounded queue per webhook, and one background task per webhook delivers it.
A slow or dead receiver therefore delays neither a decision nor the other
receivers; when its queue is full the oldest event is dropped, because the
newest says most about where things stand.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import aiohttp
import structlog

from watchdogd.config.notify import TargetBase
from watchdogd.config.types import SecretUrl
from watchdogd.httppost import mask_urls, post_json
from watchdogd.telemetry import Metrics

log = structlog.get_logger("watchdogd.notify")

EventKind = Literal[
    "proposal",
    "veto",
    "approval",
    "rollback_started",
    "rollback_succeeded",
    "rollback_failed",
    "dry_run_proposal",
    "dry_run",
    "promotion",
    "unverified",
    "cancelled",
    "retry",
    "rule_firing",
    "rule_resolved",
    "rule_blind",
    "freeze",
    "unfreeze",
    "known_bad",
    "swarm_rolled_back",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

# The `events:` filter of a webhook's config names families, not kinds.
_FAMILY: dict[str, str] = {
    "proposal": "proposal",
    "approval": "proposal",
    "veto": "veto",
    "rollback_started": "rollback",
    "rollback_succeeded": "rollback",
    "rollback_failed": "rollback",
    "dry_run_proposal": "proposal",
    "dry_run": "rollback",
    "promotion": "promotion",
    "unverified": "promotion",
    "cancelled": "rollback",
    "retry": "rollback",
    "freeze": "rollback",
    "unfreeze": "rollback",
    "rule_firing": "notify",
    "rule_resolved": "notify",
    "rule_blind": "notify",
    "known_bad": "notify",
    "swarm_rolled_back": "rollback",
}
# Fields worth repeating in the one-line text, in this order.
_TEXT_FIELDS = ("rule", "value", "threshold", "reason", "actor", "error", "image", "previous_image")
_CORE_KEYS = ("event", "service", "deployment_id", "rollback_id", "at")
_MAX_TEXT = 2000
ATTEMPTS = 5
"""Deliveries tried per event: with the default 1 s backoff, about 15 s of waiting in all."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something a webhook should hear about. ``fields`` holds JSON-able details."""

    kind: EventKind
    service: str
    deployment_id: str
    rollback_id: str | None = None
    at: float
    """Unix seconds."""
    summary: str
    """One human line."""
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _FAMILY:
            raise ValueError(f"unknown event kind {self.kind!r}: use one of {', '.join(EVENT_KINDS)}")


def rfc3339(at: float) -> str:
    """Unix seconds as RFC 3339 UTC: ``2025-01-02T03:04:05.250000Z``."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def text(event: Event) -> str:
    """The one line a chat shows: service, kind, summary and the key values."""
    details = []
    for key in _TEXT_FIELDS:
        value = event.fields.get(key)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        details.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    line = f"watchdogd: {event.service} {event.kind} (deployment {event.deployment_id}"
    if event.rollback_id:
        line += f", rollback {event.rollback_id}"
    line += f"): {event.summary}"
    if event.kind.startswith("dry_run"):
        # said first, where a chat preview or a pager title cuts the line
        line = "dry run: " + line.replace("): dry run: ", "): ", 1)
    if details:
        line += f" [{', '.join(details)}]"
    line = " ".join(line.split())  # one line, whatever the summary held
    return line if len(line) <= _MAX_TEXT else line[: _MAX_TEXT - 3] + "..."


def slack_escape(line: str) -> str:
    """``line`` as Slack text that shows it as written: ``&``, ``<`` and ``>`` as HTML entities.

    Slack reads ``<!channel>``, ``<@U123>`` and ``<https://x|label>`` in text as
    mentions and links; an image name or a reason must not ping anyone or hide a link.
    """
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(event: Event, fmt: Literal["slack", "json"] = "slack") -> dict[str, Any]:
    """The JSON body: ``text`` plus the structured event, nested under ``watchdogd`` for slack.

    Fields named ``*_at`` that hold Unix seconds are sent as RFC 3339 UTC. For slack
    ``text`` is escaped (``slack_escape``); the structured fields carry the exact strings.
    """
    structured: dict[str, Any] = {
        "event": event.kind,
        "service": event.service,
        "deployment_id": event.deployment_id,
        "rollback_id": event.rollback_id,
        "at": rfc3339(event.at),
    }
    for key, value in event.fields.items():
        if key in _CORE_KEYS:
            continue
        if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
            structured[key] = rfc3339(value) if math.isfinite(value) else None
        else:
            structured[key] = _jsonable(value)
    if fmt == "slack":
        # escaped after text() shortened it, so no entity is cut in half
        return {"text": slack_escape(text(event)), "watchdogd": structured}
    return {"text": text(event), **structured}


def _jsonable(value: Any) -> Any:
    """``value`` as strict JSON: NaN and infinities as Prometheus writes them, unknown types as text."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)  # a SecretUrl shows itself masked


class _Webhook:
    """One receiver: its config, its queue and the task that empties it."""

    def __init__(self, config: TargetBase, queue_size: int) -> None:
        self.config = config
        self.label = config.label()  # password and query values masked
        self.queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[None] | None = None
        self.sending: Event | None = None
        self.dropped = 0

    def wants(self, event: Event) -> bool:
        families = self.config.events
        return families is None or _FAMILY[event.kind] in families


class Notifier:
    """Delivers events to webhooks in the background; see the module's docstring."""

    def __init__(
        self,
        configs: Sequence[TargetBase],
        metrics: Metrics | None = None,
        *,
        backoff: float = 1.0,
        queue_size: int = 1000,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if backoff < 0:
            raise ValueError(f"backoff must not be negative, not {backoff}")
        self._webhooks = [_Webhook(config, queue_size) for config in configs]
        self._metrics = metrics
        self._backoff = backoff
        self._closed = False

    def start(self) -> None:
        """Start one delivery task per webhook; call it with the event loop running."""
        if self._closed:
            raise RuntimeError("the notifier is closed")
        for webhook in self._webhooks:
            if webhook.task is None:
                webhook.task = asyncio.create_task(self._run(webhook), name=f"notify {webhook.label}")
                webhook.task.add_done_callback(self._stopped)

    def notify(self, event: Event) -> None:
        """Queue ``event`` for every webhook that wants it; returns at once and never raises."""
        try:
            for webhook in self._webhooks:
                if not webhook.wants(event):
                    continue
                if self._closed:
                    self._drop(webhook, event, "notifier closed")
                    continue
                if webhook.queue.full():
                    oldest = webhook.queue.get_nowait()
                    webhook.queue.task_done()
                    self._drop(webhook, oldest, f"queue full ({webhook.queue.maxsize})")
                webhook.queue.put_nowait(event)
        except Exception:  # a notification must never break the decision that sent it
            log.exception("notification_not_queued", kind=getattr(event, "kind", None))

    # the drain's budget, not a limit on the call: close always returns, cancelling what is left
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Deliver what can be delivered within ``timeout`` seconds, then stop; the rest is dropped."""
        self._closed = True
        running = [w for w in self._webhooks if w.task is not None and not w.task.done()]
        if running:
            joins = [asyncio.ensure_future(w.queue.join()) for w in running]
            _, pending = await asyncio.wait(joins, timeout=max(0.0, timeout))
            for join in pending:
                join.cancel()
        # counted before cancelling: a cancelled worker forgets the event it was sending
        left = [(w, w.queue.qsize() + (w.sending is not None)) for w in self._webhooks]
        tasks = [w.task for w in self._webhooks if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for webhook, count in left:
            if count:
                self._count("dropped", count)
                log.warning(
                    "notifications_undelivered",
                    webhook=webhook.label,
                    count=count,
                    reason="never started"
                    if webhook.task is None
                    else f"not delivered within {timeout:g}s of shutdown",
                )

    async def _run(self, webhook: _Webhook) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                event = await webhook.queue.get()
                webhook.sending = event
                try:
                    await self._deliver(session, webhook, event)
                finally:
                    webhook.sending = None
                    webhook.queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, webhook: _Webhook, event: Event) -> None:
        config = webhook.config
        bound = log.bind(
            webhook=webhook.label,
            kind=event.kind,
            service=event.service,
            deployment=event.deployment_id,
            rollback=event.rollback_id,
        )
        from watchdogd.notifiers import outgoing

        try:
            requests = outgoing(config, event)
            if not requests:
                return  # a pager hears only about what opens and ends an incident
            for request in requests:
                result = await post_json(
                    session,
                    SecretUrl(request.url),
                    request.body,
                    attempt_timeout=config.timeout,
                    attempts=ATTEMPTS,
                    backoff=self._backoff,
                    headers=request.headers,
                )
                if not result.ok:
                    break
        except Exception as exc:  # one bad event must not stop the deliveries after it
            self._count("failed")
            bound.error("notification_failed", reason=mask_urls(f"{type(exc).__name__}: {exc}"))
            return
        if result.ok:
            self._count("delivered")
            bound.debug("notification_sent", attempts=result.attempts)
        else:
            self._count("failed")
            bound.warning("notification_failed", reason=result.reason, attempts=result.attempts)

    def _drop(self, webhook: _Webhook, event: Event, reason: str) -> None:
        webhook.dropped += 1
        self._count("dropped")
        log.warning(
            "notification_dropped",
            webhook=webhook.label,
            kind=event.kind,
            service=event.service,
            deployment=event.deployment_id,
            reason=reason,
            dropped=webhook.dropped,
        )

    def _count(self, outcome: str, amount: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.notifications.labels(outcome=outcome).inc(amount)

    @staticmethod
    def _stopped(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("notifier_stopped", task=task.get_name(), error=mask_urls(repr(task.exception())))
