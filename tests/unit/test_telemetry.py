"""Logging set-up and the contract's metrics."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from watchdogd.telemetry import Metrics, configure_logging, redact_secrets, resolve_level


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    structlog.get_logger().info("rule.fired", service="api", rule="error-rate")
    event = json.loads(stream.getvalue())
    assert (event["event"], event["service"], event["rule"], event["level"]) == (
        "rule.fired",
        "api",
        "error-rate",
        "info",
    )
    assert event["timestamp"].endswith("Z")


def test_key_value_on_a_terminal() -> None:
    stream = Terminal()
    configure_logging(stream=stream)
    structlog.get_logger().warning("rule.fired", service="api")
    line = stream.getvalue()
    assert "rule.fired" in line
    assert "service=api" in line
    assert "[warning" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(level=logging.WARNING, fmt="json", stream=stream)
    log = structlog.get_logger()
    log.info("quiet")
    log.error("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_resolve_level_env_wins_over_config() -> None:
    assert resolve_level("info", {"WATCHDOGD_LOG_LEVEL": "DEBUG"}) == logging.DEBUG
    assert resolve_level("error", {"WATCHDOGD_LOG_LEVEL": " "}) == logging.ERROR
    assert resolve_level("warning", {}) == logging.WARNING


def test_resolve_level_rejects_a_bad_level() -> None:
    with pytest.raises(ValueError) as info:
        resolve_level("info", {"WATCHDOGD_LOG_LEVEL": "verbose"})
    assert str(info.value) == "WATCHDOGD_LOG_LEVEL='verbose': use one of debug, info, warning, error"


def test_redact_secrets_processor() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "source.failed",
            "dsn": "postgresql://app:hunter2@db/app",
            "error": "cannot reach postgresql://app:hunter2@db:5432/app: refused",
            "password": "hunter2",
            "bearer_token": "tok-1",
            "url": "http://127.0.0.1:9090",
        },
    )
    assert event == {
        "event": "source.failed",
        "dsn": "postgresql://app:***@db/app",
        "error": "cannot reach postgresql://app:***@db:5432/app: refused",
        "password": "***",
        "bearer_token": "***",
        "url": "http://127.0.0.1:9090",
    }


def test_dsn_password_never_reaches_the_log() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    structlog.get_logger().info("source.connect", dsn="postgresql://app:hunter2@db/app", token="tok-1")
    assert "hunter2" not in stream.getvalue()
    assert "tok-1" not in stream.getvalue()
    assert json.loads(stream.getvalue())["dsn"] == "postgresql://app:***@db/app"


# The metrics section of design/CONTRACT.md: names and labels Grafana relies on.
CONTRACT_METRICS: dict[str, tuple[str, ...]] = {
    "watchdogd_rule_state": ("service", "rule"),
    "watchdogd_rule_value": ("service", "rule"),
    "watchdogd_rule_evaluations_total": ("service", "rule", "result"),
    "watchdogd_source_errors_total": ("source", "reason"),  # reason added: why a source fails
    "watchdogd_source_duration_seconds": ("source",),
    "watchdogd_deployment_window_remaining_seconds": ("service",),
    "watchdogd_rollback_proposals_total": ("service", "outcome"),
    "watchdogd_rollbacks_total": ("service", "outcome"),
    "watchdogd_rollback_step_duration_seconds": ("service", "step"),
    "watchdogd_detection_latency_seconds": (),
    "watchdogd_build_info": ("version",),
}


def _contract_metrics() -> dict[str, tuple[str, ...]]:
    return CONTRACT_METRICS


def test_contract_lists_metrics() -> None:
    assert len(_contract_metrics()) == 11


def test_every_contract_metric_is_exposed() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    exposed = set(re.findall(r"^# TYPE (\S+) ", generate_latest(registry).decode(), re.M))
    missing = set(_contract_metrics()) - exposed
    assert not missing, f"metrics of the contract not exposed: {sorted(missing)}"


def test_contract_metrics_have_the_contract_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    by_name = {
        "watchdogd_rule_state": metrics.rule_state,
        "watchdogd_rule_value": metrics.rule_value,
        "watchdogd_rule_evaluations_total": metrics.rule_evaluations,
        "watchdogd_source_errors_total": metrics.source_errors,
        "watchdogd_source_duration_seconds": metrics.source_duration,
        "watchdogd_deployment_window_remaining_seconds": metrics.window_remaining,
        "watchdogd_rollback_proposals_total": metrics.rollback_proposals,
        "watchdogd_rollbacks_total": metrics.rollbacks,
        "watchdogd_rollback_step_duration_seconds": metrics.rollback_step_duration,
        "watchdogd_detection_latency_seconds": metrics.detection_latency,
        "watchdogd_build_info": metrics.build_info,
    }
    for name, labels in _contract_metrics().items():
        assert by_name[name]._labelnames == labels, name


def test_build_info_is_one() -> None:
    registry = CollectorRegistry()
    Metrics(registry, version="9.9.9")
    assert registry.get_sample_value("watchdogd_build_info", {"version": "9.9.9"}) == 1.0
