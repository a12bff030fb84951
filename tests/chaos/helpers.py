"""Small readers over a running watchdogd's API, shared by the chaos cases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.e2e.conftest import Watchdogd


def register(wd: Watchdogd, service: str, **extra: Any) -> dict[str, Any]:
    status, body = wd.post("/v1/deployments", {"service": service, **extra})
    assert status == 201, body
    return dict(body)


def rollbacks(wd: Watchdogd, service: str | None = None) -> list[dict[str, Any]]:
    status, body = wd.get("/v1/rollbacks")
    assert status == 200, body
    return [r for r in body["items"] if service is None or r["service"] == service]


def deployment(wd: Watchdogd, deployment_id: str) -> dict[str, Any]:
    status, body = wd.get(f"/v1/deployments/{deployment_id}")
    assert status == 200, body
    return dict(body)


def rule(wd: Watchdogd, deployment_id: str, name: str) -> dict[str, Any]:
    return dict(next(r for r in deployment(wd, deployment_id)["rules"] if r["name"] == name))


def audit(wd: Watchdogd, deployment_id: str) -> list[dict[str, Any]]:
    status, body = wd.get(f"/v1/audit?deployment={deployment_id}")
    assert status == 200, body
    return list(body["items"])


def epoch(stamp: str) -> float:
    """Seconds since the epoch of one of the API's RFC 3339 times."""
    return datetime.fromisoformat(stamp).timestamp()
