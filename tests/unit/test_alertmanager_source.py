"""The alertmanager source: the alert set, matchers, resolution and its bound."""

from __future__ import annotations

import json
from typing import Any

import pytest

from watchdogd.config.loader import load_config_text
from watchdogd.config.models import AlertmanagerSource
from watchdogd.errors import ConfigError
from watchdogd.sources.alertmanager import AlertmanagerAlerts, WebhookPayload
from watchdogd.sources.base import Measure

NOW = 1_800_000_000.0
RULE = 'alertname="HighErrorRate", service="api"'


def payload(*alerts: dict[str, Any]) -> WebhookPayload:
    body = {"version": "4", "status": "firing", "receiver": "wd", "groupKey": "g", "alerts": list(alerts)}
    return WebhookPayload.model_validate_json(json.dumps(body))


def alert(
    fp: str, status: str = "firing", ends: str = "0001-01-01T00:00:00Z", **labels: str
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRate", "service": "api", **labels},
        "startsAt": "2026-01-05T02:00:00Z",
        "endsAt": ends,
        "fingerprint": fp,
    }


async def test_counts_matching_firing_alerts_and_drops_resolved_ones() -> None:
    source = AlertmanagerAlerts("am", AlertmanagerSource(type="alertmanager"))
    source.receive(payload(alert("a"), alert("b", pod="1"), alert("c", service="billing")))
    measure = Measure("alerts", RULE)
    assert (await source.fetch([measure], NOW))[measure].value == 2.0
    source.receive(payload(alert("a", status="resolved", ends="2026-01-05T02:05:00Z")))
    assert source.firing(RULE, NOW) == 1
    source.receive(payload(alert("b", ends="2020-01-01T00:00:00Z")))  # endsAt in the past
    assert source.firing(RULE, NOW) == 0
    assert source.firing("{}", NOW) == 1  # the billing alert still fires


def test_the_set_is_bounded_oldest_first() -> None:
    source = AlertmanagerAlerts("am", AlertmanagerSource(type="alertmanager", max_alerts=2))
    source.receive(payload(alert("a"), alert("b"), alert("c")))
    assert list(source.alerts) == ["b", "c"]
    assert source.dropped == 1


def test_a_rule_needs_valid_matchers_on_an_alertmanager_source() -> None:
    text = """
sources: {am: {type: alertmanager}}
services:
  api:
    rules:
      - {name: r, source: am, alerts: 'alertname=HighErrorRate', condition: ">= 1"}
"""
    with pytest.raises(ConfigError, match="expected a quoted value"):
        load_config_text(text, "c.yaml")
    with pytest.raises(ConfigError, match="it takes alerts: label matchers"):
        load_config_text(text.replace("alerts: 'alertname=HighErrorRate'", "field: up"), "c.yaml")


def test_exec_rules_name_their_field() -> None:
    text = """
sources: {smoke: {type: exec, command: [./smoke.sh]}}
services:
  api:
    rules:
      - {name: r, source: smoke, field: failed_tests, condition: "> 2"}
"""
    with pytest.raises(ConfigError, match="failed_tests needs a JUnit report"):
        load_config_text(text, "c.yaml")
    with pytest.raises(ConfigError, match="one of: exit_code, last_number, failed_tests"):
        load_config_text(text.replace("failed_tests", "passed"), "c.yaml")
    with pytest.raises(ConfigError, match="a string with shell: true"):
        load_config_text(text.replace("[./smoke.sh]", "./smoke.sh"), "c.yaml")
