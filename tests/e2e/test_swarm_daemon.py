"""``watchdogd run`` guarding a real 3-replica Swarm service (the test bed's swarm, host networking only).

A bad ``docker service update`` is noticed from Swarm's event (nothing registers
it through the API), the per-task scrape shows the fleet's errors, the rollback
asks Swarm for the previous spec; watchdogd killed with SIGKILL once Swarm
reports the rollback started, restarted, and the rollback completes exactly
once. A rollback that is not watchdogd's (Swarm's own on a failed update, or an
operator's ``docker service rollback``) is never a deployment, and is audited
and notified.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import VIEWER_TOKEN, Receiver, Watchdogd
from tests.e2e.test_daemon import rollbacks
from tests.integration.test_swarm_rollback import REPLICAS, Service, docker, port_prefix
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.rollback.swarmspec import image_of

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(docker_client: Any, app_images: dict[str, str]) -> Iterator[Service]:
    if docker_client.info()["Swarm"]["LocalNodeState"] != "active":
        raise RuntimeError("the test bed's swarm is not active: run scripts/testbed.sh")
    service = Service(f"wdtest-{secrets.token_hex(4)}", port_prefix())
    try:
        yield service
    finally:
        with contextlib.suppress(RuntimeError):
            docker("service", "rm", service.name)


def config_for(fleet: Service, hook: Receiver) -> str:
    url = f"http://127.0.0.1:{fleet.prefix}{{slot}}/cgi-bin/metrics"
    return f"""
defaults: {{interval: 500ms, window: 2m, grace: 1s, mode: auto}}
notify:
  - {{type: webhook, url: "{hook.url}", format: json, timeout: 2s}}
sources:
  fleet: {{type: scrape, url: "{url}", swarm_service: {fleet.name}, timeout: 2s}}
services:
  api:
    swarm_service: {fleet.name}
    rollback:
      steps: [container]
      container: {{healthy_timeout: 60s, settle: 1s}}
    rules:
      - name: error-rate
        source: fleet
        ratio: {{numerator: 'http_requests_total{{code=~"5.."}}', denominator: http_requests_total, over: 3s}}
        condition: "> 0.05"
        for: 2s
        action: rollback
"""


def deployments(wd: Watchdogd) -> list[dict[str, Any]]:
    status, body = wd.get("/v1/deployments")
    assert status == 200, body
    return list(body["items"])


def noticed(wd: Watchdogd, image: str, timeout: float = 20) -> dict[str, Any]:
    found = lambda: next((d for d in deployments(wd) if d["image"] == image), None)  # noqa: E731
    return dict(wd.wait_for(f"the deploy of {image} noticed from Swarm", found, timeout))


def update_state(fleet: Service, api: Any) -> str:
    return str((fleet.inspect(api).get("UpdateStatus") or {}).get("State") or "")


class SwarmEvents:
    """``docker events`` of Swarm services followed live from now (the engine keeps too few to ask later)."""

    def __init__(self, fleet: Service) -> None:
        self.fleet = fleet
        self.process = subprocess.Popen(
            ["docker", "events", "--filter", "type=service", "--format", "{{json .}}"],
            stdout=subprocess.PIPE,
            text=True,
        )

    def updates(self) -> list[dict[str, str]]:
        """Every update event of the service so far, each one's attributes; stops following."""
        time.sleep(1.0)  # the last events reach the stream
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        attributes = [dict(e["Actor"]["Attributes"]) for e in events if e.get("Action") == "update"]
        return [a for a in attributes if a.get("name") == self.fleet.name]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def audited(wd: Watchdogd, deployment_id: str, action: str) -> list[dict[str, Any]]:
    status, audit = wd.get(f"/v1/audit?deployment={deployment_id}", token=VIEWER_TOKEN)
    assert status == 200, audit
    return [e for e in audit["items"] if e["action"] == action]


def test_a_bad_swarm_update_is_rolled_back_exactly_once_across_a_kill_9(
    watchdogd: Any, docker_client: Any, fleet: Service, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    api = docker_client.api
    # A v1 task may fail its first start on a loaded host (its health check late within the
    # rollback's monitor): Swarm then pauses the rollback, its own decision, which watchdogd
    # reports and never overrides. This test is about watchdogd asking once across a kill,
    # so Swarm is told to go on and restart such a task instead.
    fleet.create("--env", "RPS=20", "--rollback-failure-action", "continue")
    events = SwarmEvents(fleet)
    request.addfinalizer(events.close)
    wd: Watchdogd = watchdogd(config_for(fleet, receiver))
    wd.start()

    fleet.update("--image", APP_V2, "--env-add", "ERROR_RATIO=0.5", detach=True)
    deployment = noticed(wd, APP_V2)
    assert deployment["previous_image"] == APP_V1, deployment
    entry = wd.wait_for("its audit entry", lambda: audited(wd, deployment["id"], "deployment"), timeout=5)
    assert entry[0]["detail"]["origin"] == "docker", entry
    deadline = time.monotonic() + 60
    while update_state(fleet, api) != "rollback_started":  # watchdogd's request reached Swarm: now the kill
        assert time.monotonic() < deadline, f"no rollback started\n{wd.log()}"
        time.sleep(0.05)
    wd.kill()
    assert APP_V2 in {image for image, _ in fleet.task_images(api)}, "killed before every task moved"

    wd.start()
    done = wd.wait_for(
        "the rollback finished after the restart",
        lambda: next((r for r in rollbacks(wd) if r["state"] in ("succeeded", "failed")), None),
        timeout=90,
    )

    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert done["deployment_id"] == deployment["id"]
    assert done["reasons"][0]["rule"] == "error-rate"
    assert len(rollbacks(wd)) == 1
    assert fleet.task_images(api) == [(APP_V1, "running")] * REPLICAS
    attrs = fleet.inspect(api)
    assert image_of(attrs["Spec"]) == APP_V1
    assert attrs["UpdateStatus"]["State"] == "rollback_completed"
    assert image_of(attrs["PreviousSpec"]) == APP_V2, "a second rollback would have gone back to v2"
    started = [e for e in events.updates() if e.get("updatestate.new") == "rollback_started"]
    assert len(started) == 1, started
    _, record = wd.get(f"/v1/deployments/{deployment['id']}")
    assert record["state"] == "rolled_back"
    assert [d["image"] for d in deployments(wd)] == [APP_V2], "the rollback was registered as a deploy"
    assert audited(wd, deployment["id"], "swarm_rolled_back") == [], "watchdogd's own rollback is not Swarm's"
    assert wd.stop() == 0


@pytest.mark.parametrize("by", ["swarm", "operator"])
def test_a_rollback_not_watchdogds_is_no_deployment_and_is_audited_and_notified(
    watchdogd: Any, docker_client: Any, fleet: Service, receiver: Receiver, by: str
) -> None:
    api = docker_client.api
    fleet.create("--env", "RPS=20", *(["--update-failure-action", "rollback"] if by == "swarm" else []))
    wd: Watchdogd = watchdogd(config_for(fleet, receiver))
    wd.start()

    # v2 answering well (its image's default errors off): no rule of watchdogd's fires
    if by == "swarm":  # v2's health check fails: Swarm's update fails and Swarm rolls it back itself
        fleet.update("--image", APP_V2, "--env-add", "ERROR_RATIO=0", "--env-add", "UNHEALTHY=1", detach=True)
    else:
        fleet.update("--image", APP_V2, "--env-add", "ERROR_RATIO=0", detach=True)
    deployment = noticed(wd, APP_V2)
    if by == "operator":  # once v2 runs everywhere, as an operator unhappy with it would
        deadline = time.monotonic() + 60
        while update_state(fleet, api) != "completed":
            assert time.monotonic() < deadline, f"{fleet.inspect(api).get('UpdateStatus')}\n{wd.log()}"
            time.sleep(0.1)
        docker("service", "rollback", "-d", fleet.name)
    deadline = time.monotonic() + 60
    while update_state(fleet, api) not in ("rollback_completed", "rollback_paused"):  # Swarm's rollback ended
        assert time.monotonic() < deadline, fleet.inspect(api).get("UpdateStatus")
        time.sleep(0.1)

    entries = wd.wait_for(
        "the audit entry of Swarm's rollback",
        lambda: audited(wd, deployment["id"], "swarm_rolled_back"),
        timeout=10,
    )
    sent = wd.wait_for(
        "the notification",
        lambda: [b for b in receiver.bodies if b.get("event") == "swarm_rolled_back"],
        timeout=10,
    )
    time.sleep(2)  # any late event had its chance to register something
    assert [d["image"] for d in deployments(wd)] == [APP_V2], "the rollback was registered as a deploy"
    assert len(entries) == 1 and len(sent) == 1, (entries, sent)
    detail = entries[0]["detail"]
    assert detail["by"] == by and detail["image"] == APP_V1 and detail["from_image"] == APP_V2, detail
    assert sent[0]["deployment_id"] == deployment["id"] and sent[0]["by"] == by
    assert rollbacks(wd) == [], "watchdogd rolled back a service Swarm was rolling back"
    assert wd.stop() == 0
