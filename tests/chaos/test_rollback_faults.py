"""Faults around a rollback: an engine that refuses, a webhook that never answers."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest

from tests.chaos.conftest import Exporter, Receiver, Watchdogd
from tests.chaos.helpers import deployment, register, rollbacks
from tests.e2e.conftest import scrape_config
from tests.testbed.containers import ContainerRegistry, free_port
from tests.testbed.images import APP_V2, AppBehaviour

pytestmark = pytest.mark.integration


async def test_engine_refusing_the_previous_container_puts_the_bad_one_back(
    watchdogd: Any,
    app_images: Any,
    docker_client: Any,
    container_registry: ContainerRegistry,
    pg_dsn: str,
    receiver: Receiver,
) -> None:
    name = container_registry.name("api")
    port = free_port()
    v1 = container_registry.run_app("v1", AppBehaviour(error_ratio=0.0), name=name, port=port)
    wd: Watchdogd = watchdogd(
        f"""
defaults: {{interval: 500ms, window: 2m, grace: 5s}}
sources:
  app: {{type: scrape, url: "http://127.0.0.1:{port}/cgi-bin/metrics", timeout: 2s}}
notify:
  - {{type: webhook, url: "{receiver.url}", format: json, timeout: 5s}}
services:
  api:
    container: {name}
    rollback:
      steps: [container]
      container: {{stop_timeout: 3s, healthy_timeout: 15s, settle: 300ms}}
    rules:
      - name: error-rate
        source: app
        ratio: {{numerator: 'http_requests_total{{code=~"5.."}}', denominator: http_requests_total, over: 3s}}
        condition: "> 0.05"
        for: 2s
        action: rollback
"""
    )
    wd.state_url = pg_dsn
    wd.start()
    v1.container.remove(force=True)
    v2 = container_registry.run_app("v2", AppBehaviour(error_ratio=0.2, log_line=""), name=name, port=port)
    deployed = register(wd, "api", image=APP_V2)

    proposal = wd.wait_for("a pending proposal", lambda: rollbacks(wd), timeout=40)[0]
    assert proposal["state"] == "pending"
    # The fault: the previous container's configuration now holds an option the engine refuses.
    db = await asyncpg.connect(pg_dsn)
    try:
        raw = await db.fetchval("SELECT target FROM watchdogd_state.rollbacks WHERE id = $1", proposal["id"])
        target = json.loads(raw)
        assert target["previous"]["config"] is not None, target["previous"]
        host_config = target["previous"]["config"].setdefault("HostConfig", {})
        memory = host_config.get("Memory")
        host_config["Memory"] = 1024  # below Docker's 6MB
        await db.execute(
            "UPDATE watchdogd_state.rollbacks SET target = $1 WHERE id = $2",
            json.dumps(target),
            proposal["id"],
        )
    finally:
        await db.close()

    done = wd.wait_for(
        "the rollback ending",
        lambda: next((r for r in rollbacks(wd) if r["state"] in ("succeeded", "failed")), None),
        timeout=60,
    )
    assert done["state"] == "failed", done
    assert "creating" in done["error"] and "memory" in done["error"].lower(), done["error"]
    assert f"the deployed container is back and running: {name}" in done["error"], done["error"]
    assert deployment(wd, deployed["id"])["state"] == "rollback_failed"

    # the bad container is back under its name, running; nothing left under the -failed- name
    running = docker_client.containers.get(name)
    assert running.id == v2.container.id and running.status == "running"
    assert docker_client.containers.list(all=True, filters={"name": f"^/{name}-failed-"}) == []

    def failure_notified() -> bool:
        return any("memory" in json.dumps(b).lower() and "failed" in json.dumps(b) for b in receiver.bodies)

    wd.wait_for("the failure notified, with its reason", failure_notified, timeout=10)

    # The cause removed, an operator retries: the plan resumes from its journal and succeeds.
    host_config["Memory"] = memory
    db = await asyncpg.connect(pg_dsn)
    try:
        await db.execute(
            "UPDATE watchdogd_state.rollbacks SET target = $1 WHERE id = $2", json.dumps(target), done["id"]
        )
    finally:
        await db.close()
    status, retried = wd.post(f"/v1/rollbacks/{done['id']}/retry", {})
    assert status == 200 and retried["state"] in ("executing", "succeeded"), retried

    def succeeded() -> bool:
        return any(r["id"] == done["id"] and r["state"] == "succeeded" for r in rollbacks(wd))

    wd.wait_for("the retried rollback succeeding", succeeded, timeout=60)
    assert deployment(wd, deployed["id"])["state"] == "rolled_back"
    assert any("v1" in tag for tag in docker_client.containers.get(name).image.tags)
    _, audit = wd.get(f"/v1/audit?deployment={deployed['id']}")
    assert [e["actor"] for e in audit["items"] if e["action"] == "retry"] == ["alice"]
    status, again = wd.post(f"/v1/rollbacks/{done['id']}/retry", {})
    assert status == 409 and again["error"]["code"] == "conflict"
    assert wd.stop() == 0


def test_a_hanging_webhook_does_not_delay_the_decision(
    watchdogd: Any, exporter: Any, hanging_receiver: str
) -> None:
    breaching: Exporter = exporter(lambda _: 10.0)
    wd: Watchdogd = watchdogd(
        scrape_config(
            breaching.url,
            "window: 1m, grace: 1s, mode: dry-run",
            rule="immediate: true",
            notify=f'notify:\n  - {{type: webhook, url: "{hanging_receiver}", format: json, timeout: 30s}}\n',
        )
    )
    wd.start()
    started = time.monotonic()
    register(wd, "api")
    wd.wait_for("proposed then run (dry)", lambda: [r for r in rollbacks(wd) if r["state"] == "dry_run"], 10)
    assert time.monotonic() - started < 8.0  # the 30s webhook timeout is nowhere in it
    assert (wd.metric("watchdogd_notifications_total", outcome="delivered") or 0) == 0
    assert wd.stop(timeout=20) == 0
