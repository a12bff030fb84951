"""Logging set-up (structlog) and the metrics watchdogd exposes.

JSON lines when stdout is not a terminal (a journal, a log shipper), readable
``key=value`` lines on a terminal. Set up once, at start.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watchdogd import __version__
from watchdogd.config.types import redact_url

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LOG_LEVEL_ENV = "WATCHDOGD_LOG_LEVEL"
_SECRET_KEYS = ("password", "token", "secret", "authorization")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A processor: values under secret-sounding keys never reach the output.

    Passwords inside URLs (a DSN logged under ``dsn=`` or in an error text) are masked too.
    """
    for key, value in event.items():
        if any(hint in key.lower() for hint in _SECRET_KEYS):
            event[key] = "***"
        elif isinstance(value, str) and "://" in value:
            event[key] = _URL.sub(lambda m: redact_url(m.group(0)), value)
    return event


def resolve_level(config_level: str = "info", environ: dict[str, str] | None = None) -> int:
    """The level from ``WATCHDOGD_LOG_LEVEL`` when set, else from the config."""
    env = os.environ if environ is None else environ
    wanted = env.get(LOG_LEVEL_ENV, "").strip().lower() or config_level
    if wanted not in LEVELS:
        raise ValueError(f"{LOG_LEVEL_ENV}={wanted!r}: use one of {', '.join(LEVELS)}")
    return LEVELS[wanted]


def configure_logging(level: int = logging.INFO, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set structlog up: ``fmt`` is ``json``, ``console`` or ``auto`` (by the stream)."""
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


class Metrics:
    """Every metric of the contract, on the registry it is given.

    Names and labels are part of the contract: Grafana dashboards depend on them.
    """

    def __init__(self, registry: CollectorRegistry, version: str = __version__) -> None:
        self.registry = registry
        self.rule_state = Gauge(
            "watchdogd_rule_state",
            "State of a rule: 0 ok, 1 pending, 2 firing, 3 no data.",
            ["service", "rule"],
            registry=registry,
        )
        self.rule_value = Gauge(
            "watchdogd_rule_value", "Last value a rule evaluated.", ["service", "rule"], registry=registry
        )
        self.rule_threshold = Gauge(
            "watchdogd_rule_threshold",
            "The threshold a rule's value was last compared with (a relative rule's from its baseline).",
            ["service", "rule"],
            registry=registry,
        )
        self.rule_evaluations = Counter(
            "watchdogd_rule_evaluations",
            "Rule evaluations, by result.",
            ["service", "rule", "result"],
            registry=registry,
        )
        self.source_errors = Counter(
            "watchdogd_source_errors",
            "Failed polls of a source, by reason (timeout, unreachable, http_status, bad_data, empty, ...).",
            ["source", "reason"],
            registry=registry,
        )
        self.source_up = Gauge(
            "watchdogd_source_up",
            "1 when the source's last poll gave an answer, 0 when it failed or answered with an error.",
            ["source"],
            registry=registry,
        )
        self.rule_blind = Gauge(
            "watchdogd_rule_blind",
            "1 while a rollback rule of a watched deployment has had no data for longer than blind_after.",
            ["service", "rule"],
            registry=registry,
        )
        self.unverified = Gauge(
            "watchdogd_deployment_unverified",
            "1 while the service's latest deployment is unverified (a rollback rule saw nothing).",
            ["service"],
            registry=registry,
        )
        self.source_duration = Histogram(
            "watchdogd_source_duration_seconds",
            "How long one poll of a source took.",
            ["source"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.window_remaining = Gauge(
            "watchdogd_deployment_window_remaining_seconds",
            "Seconds left in the watch window of the service's current deployment.",
            ["service"],
            registry=registry,
        )
        self.deployment_started = Gauge(
            "watchdogd_deployment_started_timestamp_seconds",
            "When the service's current (or last) watched deployment started, in Unix seconds.",
            ["service"],
            registry=registry,
        )
        self.rollback_proposals = Counter(
            "watchdogd_rollback_proposals",
            "Rollback proposals, by how they ended.",
            ["service", "outcome"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "watchdogd_rollbacks",
            "Rollbacks executed, by outcome.",
            ["service", "outcome"],
            registry=registry,
        )
        self.rollback_step_duration = Histogram(
            "watchdogd_rollback_step_duration_seconds",
            "How long each rollback step took.",
            ["service", "step"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.detection_latency = Histogram(
            "watchdogd_detection_latency_seconds",
            "From a rule's window being complete to the rollback starting.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.notifications = Counter(
            "watchdogd_notifications",
            "Notifications to webhooks: delivered, failed (given up) or dropped (queue full, shutdown).",
            ["outcome"],
            registry=registry,
        )
        self.leader = Gauge(
            "watchdogd_leader",
            "1 when this replica leads (evaluates, decides, executes), 0 when it follows.",
            registry=registry,
        )
        self.clock_drift = Gauge(
            "watchdogd_clock_drift_seconds",
            "How far the wall clock is ahead of watchdogd's steady clock (windows keep the steady one).",
            registry=registry,
        )
        self.build_info = Gauge(
            "watchdogd_build_info", "The running version; always 1.", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)


def source_errors(registry: CollectorRegistry, source: str) -> float:
    """Every failed poll of ``source``, whatever the reason."""
    total = 0.0
    for family in registry.collect():
        if family.name == "watchdogd_source_errors":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("source") == source:
                    total += sample.value
    return total
