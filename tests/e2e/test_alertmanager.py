"""Prometheus -> Alertmanager -> watchdogd: a firing alert proposes a rollback.

A real Prometheus evaluates an always-firing alerting rule, a real
Alertmanager posts it to a live ``watchdogd run`` with a bearer token, and the
alertmanager rule proposes a rollback (a long grace: nothing is touched).
When the alert resolves, the rule goes back to ok but the proposal stands:
only an operator's veto cancels it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TOKEN, VIEWER_TOKEN, Watchdogd

pytestmark = pytest.mark.integration

FIRING_RULES = [
    {
        "name": "api",
        "rules": [
            {
                "alert": "HighErrorRate",
                "expr": "vector(1) > 0",
                "labels": {"service": "api", "severity": "critical"},
                "annotations": {"summary": "5xx above 5%"},
            },
            {"alert": "Unrelated", "expr": "vector(1) > 0", "labels": {"service": "billing"}},
        ],
    }
]
RESOLVED_RULES = [
    {
        "name": "api",
        "rules": [
            {"alert": "HighErrorRate", "expr": "vector(1) > 1", "labels": {"service": "api"}},
            {"alert": "Unrelated", "expr": "vector(1) > 0", "labels": {"service": "billing"}},
        ],
    }
]

CONFIG = """
sources:
  alerts: {type: alertmanager, interval: 1s}
services:
  api:
    grace: 10m
    rollback: {steps: [verify]}
    rules:
      - name: high-error-rate
        source: alerts
        alerts: 'alertname="HighErrorRate", service="api"'
        condition: ">= 1"
        action: rollback
"""


def alertmanager_config(watchdogd_url: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "watchdogd",
            "group_by": ["alertname", "service"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "watchdogd",
                "webhook_configs": [
                    {
                        "url": f"{watchdogd_url}/v1/alertmanager",
                        "send_resolved": True,
                        "http_config": {"authorization": {"credentials": TOKEN}},
                    }
                ],
            }
        ],
    }


def rule(daemon: Watchdogd, deployment_id: str) -> dict[str, Any]:
    _, body = daemon.get(f"/v1/deployments/{deployment_id}")
    found: dict[str, Any] = body["rules"][0]
    return found


def test_a_firing_alert_proposes_a_rollback_and_its_resolution_does_not_cancel_it(
    tmp_path: Path, watchdogd: Any, prometheus_server: Any, alertmanager_server: Any
) -> None:
    daemon: Watchdogd = watchdogd(CONFIG)
    daemon.start()
    status, created = daemon.post("/v1/deployments", {"service": "api", "image": "registry/api:v2"})
    assert status == 201, created
    deployment_id = created["id"]

    manager = alertmanager_server(config=alertmanager_config(daemon.url))
    prometheus = prometheus_server(rule_groups=FIRING_RULES, alertmanagers=[manager.address])

    proposal = daemon.wait_for(
        "a rollback proposal",
        lambda: [r for r in daemon.get("/v1/rollbacks")[1]["items"] if r["deployment_id"] == deployment_id],
        timeout=30,
    )[0]
    assert proposal["state"] == "pending"
    assert proposal["reasons"][0]["rule"] == "high-error-rate"
    assert proposal["reasons"][0]["value"] == 1.0  # the unrelated billing alert is not counted
    firing = rule(daemon, deployment_id)
    assert firing["state"] == "firing"

    # The alert resolves: the rule goes back to ok at its next evaluation, the proposal stands.
    prometheus.reload(rule_groups=RESOLVED_RULES)
    daemon.wait_for("the rule back to ok", lambda: rule(daemon, deployment_id)["state"] == "ok", timeout=30)
    assert rule(daemon, deployment_id)["value"] == 0.0
    _, still = daemon.get(f"/v1/rollbacks/{proposal['id']}")
    assert still["state"] == "pending"

    # Only an operator cancels it.
    status, vetoed = daemon.post(f"/v1/rollbacks/{proposal['id']}/veto", {"reason": "the alert resolved"})
    assert status == 200 and vetoed["state"] == "vetoed"
    assert daemon.stop() == 0


def test_the_webhook_needs_an_operator_token_and_a_valid_payload(tmp_path: Path, watchdogd: Any) -> None:
    daemon: Watchdogd = watchdogd(CONFIG)
    daemon.start()
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "watchdogd",
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "HighErrorRate", "service": "api"},
                "startsAt": "2026-01-05T02:00:00.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "abc",
            }
        ],
    }
    assert daemon.post("/v1/alertmanager", payload, token=None)[0] == 401
    assert daemon.post("/v1/alertmanager", payload, token=VIEWER_TOKEN)[0] == 403
    status, answer = daemon.post("/v1/alertmanager", payload)
    assert status == 200 and answer == {"status": "ok", "alerts": 1, "sources": 1}
    for garbage in (
        {**payload, "version": "3"},
        {**payload, "alerts": "all of them"},
        {**payload, "alerts": [{**payload["alerts"][0], "status": "maybe"}]},  # type: ignore[index]
        {**payload, "alerts": [{**payload["alerts"][0], "startsAt": "yesterday"}]},  # type: ignore[index]
        {**payload, "alerts": [{**payload["alerts"][0], "labels": {"a": 1}}]},  # type: ignore[index]
        [],
    ):
        status, body = daemon.post("/v1/alertmanager", garbage)
        assert status == 422, (garbage, body)
        assert body["error"]["code"] == "invalid"
    assert daemon.stop() == 0
