"""Alerts pushed by Alertmanager's webhook, counted by label matchers.

Alertmanager posts to ``POST /v1/alertmanager``; the API validates the
payload (``WebhookPayload``) and the daemon hands it to every alertmanager
source. A source keeps the alerts in memory, bounded, keyed by fingerprint,
and a poll answers each rule with the number of matching alerts firing.
Resolved alerts (status ``resolved``, or an ``endsAt`` in the past) are
dropped. Nothing is stored: after a restart the set fills again as
Alertmanager re-sends (at its ``repeat_interval``).

Bounded in bytes as well as in count: a body past ``MAX_PAYLOAD_BYTES`` is
answered 413 before it is parsed, an alert whose labels and annotations take
more than ``MAX_ALERT_BYTES`` makes the notification 422, and at most
``max_alerts`` alerts are kept; what a source holds is therefore at most
``max_alerts * MAX_ALERT_BYTES`` of label text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from watchdogd.config.models import AlertmanagerSource
from watchdogd.model import Sample
from watchdogd.selector import Selector, parse_matchers
from watchdogd.sources.base import Measure

log = structlog.get_logger("watchdogd.sources")

MAX_ALERTS_PER_POST = 2000
MAX_PAYLOAD_BYTES = 1 << 20
"""One notification's body at most (no more than the API takes for any body); 413 past it."""
MAX_ALERT_BYTES = 16 << 10
"""One alert's labels and annotations at most, names and values in UTF-8; 422 past it.
Alertmanager's own alerts take a few hundred bytes; runbook text belongs behind a link."""
Label = Annotated[str, Field(max_length=10_000)]
Labels = Annotated[dict[Annotated[str, Field(min_length=1, max_length=200)], Label], Field(max_length=200)]


class _Payload(BaseModel):
    # Strict types for every field Alertmanager sends; fields a newer version adds are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class WebhookAlert(_Payload):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    startsAt: AwareDatetime
    endsAt: AwareDatetime | None = None
    """Alertmanager sends year 1 (Go's zero time) for an alert still firing."""
    generatorURL: str = Field("", max_length=10_000)
    fingerprint: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _bounded(self) -> WebhookAlert:
        size = _bytes(self.labels) + _bytes(self.annotations)
        if size > MAX_ALERT_BYTES:
            raise ValueError(f"labels and annotations take {size} bytes, over {MAX_ALERT_BYTES}")
        return self


class WebhookPayload(_Payload):
    """Alertmanager's webhook notification, version 4."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = Field(max_length=1000)
    groupKey: str = Field(max_length=10_000)
    truncatedAlerts: int = Field(0, ge=0)
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Labels = Field(default_factory=dict)
    externalURL: str = Field("", max_length=10_000)
    alerts: list[WebhookAlert] = Field(max_length=MAX_ALERTS_PER_POST)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as last heard of."""

    labels: Mapping[str, str]
    ends_at: float | None
    """When Alertmanager will count it resolved; None while it is firing with no end."""

    def firing(self, at: float) -> bool:
        return self.ends_at is None or self.ends_at > at


class AlertmanagerAlerts:
    kind = "alertmanager"

    def __init__(self, name: str, config: AlertmanagerSource) -> None:
        self.name = name
        self.config = config
        self.alerts: dict[str, Alert] = {}
        self._selectors: dict[str, Selector] = {}
        self.dropped = 0

    def receive(self, payload: WebhookPayload) -> int:
        """Take a notification in: firing alerts are kept, resolved ones dropped; returns alerts kept."""
        for alert in payload.alerts:
            key = alert.fingerprint or _key(alert.labels)
            self.alerts.pop(key, None)  # a firing one goes in last: the oldest news is dropped first
            if alert.status == "firing":
                self.alerts[key] = Alert(dict(alert.labels), _epoch(alert.endsAt))
        over = len(self.alerts) - self.config.max_alerts
        if over > 0:
            for key in list(self.alerts)[:over]:
                del self.alerts[key]
            if self.dropped == 0:
                log.warning("alerts_dropped", source=self.name, max_alerts=self.config.max_alerts)
            self.dropped += over
        return len(self.alerts)

    def firing(self, matchers: str, at: float) -> int:
        """How many kept alerts match ``matchers`` and are firing at ``at``."""
        selector = self._selectors.get(matchers)
        if selector is None:
            selector = self._selectors[matchers] = parse_matchers(matchers)
        for key in [k for k, a in self.alerts.items() if not a.firing(at)]:
            del self.alerts[key]
        return sum(1 for a in self.alerts.values() if selector.matches("", a.labels))

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        out: dict[Measure, Sample] = {}
        for measure in measures:
            if measure.kind != "alerts":
                out[measure] = Sample(at, None, "an alertmanager rule counts alerts")
                continue
            try:
                out[measure] = Sample(at, float(self.firing(measure.expr, at)))
            except ValueError as exc:
                out[measure] = Sample(at, None, str(exc))
        return out

    async def close(self) -> None:
        return None


def _bytes(labels: Mapping[str, str]) -> int:
    return sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        for k, v in labels.items()
    )


def _epoch(moment: datetime | None) -> float | None:
    if moment is None or moment.year <= 1:
        return None
    return moment.timestamp()


def _key(labels: Mapping[str, str]) -> str:
    return "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))
