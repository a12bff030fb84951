"""Deploy freezes: a rollback freezes the service, POST /v1/deployments answers 409 frozen, operators
list, set and lift them, and a freeze survives a restart (it lives in the state store)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdogd.api import create_app
from watchdogd.auth import Tokens
from watchdogd.cli import build_parser
from watchdogd.ctl import freeze_lines
from watchdogd.ctl import run as ctl_run
from watchdogd.daemon import Daemon
from watchdogd.model import DeploymentState
from watchdogd.store import Store, open_store
from watchdogd.testing import (
    FakeClock,
    FakeSources,
    NoDocker,
    RecordingReporter,
    RecordingStep,
    config_of,
    memory_store,
    wait_until,
)
from watchdogd.watch.deployments import Registration
from watchdogd.watch.freezes import rfc3339

CONFIG = """
defaults: {interval: 1s, grace: 0s, window: 1h, freeze_after_rollback: 2h}
sources:
  a: {type: http, url: "http://127.0.0.1:1/a"}
services:
  api:
    rollback: {steps: [webhook], webhook: {url: "http://127.0.0.1:1/hook"}}
    rules:
      - {name: errors, source: a, field: up, condition: "> 0.5", action: rollback}
  web:
    freeze_after_rollback: 0s
    rollback: {steps: [webhook], webhook: {url: "http://127.0.0.1:1/hook"}}
"""
TOKENS = "tokens:\n" + "".join(
    f"  - {{name: {who}, role: {role}, token: {who}-token-0123456789}}\n"
    for who, role in (("ci", "deployer"), ("alice", "operator"), ("bob", "viewer"))
)


async def open_daemon(store: Store, clock: FakeClock, text: str = CONFIG) -> tuple[Daemon, RecordingReporter]:
    daemon = await Daemon.open(
        config_of(text),
        store=store,
        clock=clock,
        make_source=FakeSources(),
        polling=False,
        steps={"webhook": RecordingStep("webhook")},
        docker=NoDocker(),
        tick=0.02,
    )
    return daemon, RecordingReporter().attach(daemon.report)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, RecordingReporter, TestClient[Any, Any]]]:
    clock = FakeClock()
    daemon, recorded = await open_daemon(await memory_store(clock), clock)
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(daemon, Tokens.load(tokens))))
    await client.start_server()
    yield daemon, recorded, client
    await client.close()
    await daemon.close(2)


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-token-0123456789"}


async def roll_back(daemon: Daemon, service: str = "api") -> str:
    deployment, _ = await daemon.deployments.register(Registration(service, "app:v2", "app:v1"), "ci")
    await daemon.operators.manual_rollback(deployment.id, "alice", "errors")
    await wait_until(lambda: _state(daemon, deployment.id), what="the rollback to end")
    return deployment.id


async def _state(daemon: Daemon, deployment_id: str) -> bool:
    found = await daemon.store.deployment(deployment_id)
    return found is not None and found.state is DeploymentState.ROLLED_BACK


async def test_a_rollback_freezes_the_service_and_deployments_are_refused(
    running: tuple[Daemon, RecordingReporter, TestClient[Any, Any]],
) -> None:
    daemon, recorded, client = running
    await roll_back(daemon)
    await wait_until(lambda: recorded.of("frozen"), what="the freeze")
    answer = await client.post(
        "/v1/deployments", json={"service": "api", "image": "app:v3"}, headers=auth("ci")
    )
    assert answer.status == 409
    error = (await answer.json())["error"]
    assert error["code"] == "frozen"
    assert error["freeze"]["reason"].startswith("rolled back (rollback ")
    assert error["freeze"]["until"] == rfc3339(daemon.clock() + 7200)
    assert "ctl unfreeze api" in error["message"]
    listed = await (await client.get("/v1/freezes", headers=auth("bob"))).json()
    assert [f["service"] for f in listed["items"]] == ["api"]
    assert listed["items"][0]["by"] == "watchdogd"
    frozen = recorded.of("frozen")[0]
    assert frozen.spec.notify == "freeze" and frozen.deployment_id is not None
    entries = await daemon.store.audit_entries()
    assert "frozen" in [e.action for e in entries]
    # another service is not frozen; one whose freeze_after_rollback is 0s is not frozen by its rollback
    await roll_back(daemon, "web")
    ok = await client.post("/v1/deployments", json={"service": "web", "image": "w:v3"}, headers=auth("ci"))
    assert ok.status == 201


async def test_operators_set_and_lift_freezes(
    running: tuple[Daemon, RecordingReporter, TestClient[Any, Any]],
) -> None:
    daemon, _, client = running
    body = {"reason": "incident INC-42 in progress", "for": "2h"}
    refused = await client.post("/v1/services/api/freeze", json=body, headers=auth("ci"))
    assert refused.status == 403
    unknown = await client.post("/v1/services/nope/freeze", json=body, headers=auth("alice"))
    assert unknown.status == 404
    bad = await client.post(
        "/v1/services/api/freeze", json={"reason": "x", "for": "soon"}, headers=auth("alice")
    )
    assert bad.status == 422
    made = await client.post("/v1/services/api/freeze", json=body, headers=auth("alice"))
    assert made.status == 201
    freeze = await made.json()
    assert (freeze["by"], freeze["reason"]) == ("alice", "incident INC-42 in progress")
    answer = await client.post("/v1/deployments", json={"service": "api"}, headers=auth("ci"))
    assert answer.status == 409 and (await answer.json())["error"]["code"] == "frozen"
    assert (await client.delete("/v1/services/api/freeze", headers=auth("bob"))).status == 403
    lifted = await client.delete("/v1/services/api/freeze", headers=auth("alice"))
    assert lifted.status == 200
    assert (await lifted.json())["lifted"]["reason"] == "incident INC-42 in progress"
    assert (await client.delete("/v1/services/api/freeze", headers=auth("alice"))).status == 404
    answer = await client.post("/v1/deployments", json={"service": "api"}, headers=auth("ci"))
    assert answer.status == 201
    actions = [(e.actor, e.action) for e in await daemon.store.audit_entries()]
    assert ("alice", "frozen") in actions and ("alice", "unfrozen") in actions


async def test_an_operators_longer_freeze_is_not_shortened_by_a_rollback(
    running: tuple[Daemon, RecordingReporter, TestClient[Any, Any]],
) -> None:
    daemon, _, _ = running
    await daemon.freezes.set("api", "release train stopped", 86400.0, "alice")
    await roll_back(daemon)
    [freeze] = await daemon.store.freezes()
    assert (freeze.by, freeze.until) == ("alice", daemon.clock() + 86400.0)


async def test_a_freeze_ends_by_itself() -> None:
    clock = FakeClock()
    daemon, _ = await open_daemon(await memory_store(clock), clock)
    try:
        await daemon.freezes.set("api", "maintenance", 60.0, "alice")
        with pytest.raises(Exception, match="frozen until"):
            await daemon.freezes.check("api")
        await clock.advance(61)
        await daemon.freezes.check("api")
        assert await daemon.store.freezes() == []
    finally:
        await daemon.close(2)


async def test_a_freeze_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    daemon, _ = await open_daemon(await open_store(url, clock=clock), clock)
    await roll_back(daemon)
    await daemon.close(2)
    await daemon.store.aclose()
    again, _ = await open_daemon(await open_store(url, clock=clock), clock)
    try:
        with pytest.raises(Exception, match="api is frozen until") as refused:
            await again.freezes.check("api")
        assert getattr(refused.value, "code", None) == "frozen"
    finally:
        await again.close(2)


async def test_ctl_freeze_unfreeze_and_status(
    running: tuple[Daemon, RecordingReporter, TestClient[Any, Any]],
) -> None:
    _, _, client = running
    url = str(client.make_url("/")).rstrip("/")

    def ctl(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        args = build_parser().parse_args(["ctl", "--url", url, "--token", "alice-token-0123456789", *argv])
        return ctl_run(args, out), out.getvalue()

    code, text = await asyncio.to_thread(ctl, "freeze", "api", "--for", "2h", "--reason", "INC-7")
    assert code == 0 and text.startswith("FROZEN api: no deployments for ") and "INC-7" in text
    code, text = await asyncio.to_thread(ctl, "status")
    assert code == 0 and "FROZEN api" in text and "by alice" in text
    code, text = await asyncio.to_thread(ctl, "unfreeze", "api")
    assert code == 0 and text.strip() == "unfrozen api (was: INC-7)"
    code, text = await asyncio.to_thread(ctl, "status")
    assert "FROZEN" not in text
    code, _ = await asyncio.to_thread(ctl, "unfreeze", "api")
    assert code == 1


def test_freeze_lines_escape_what_the_server_sent() -> None:
    [line] = freeze_lines(
        [{"service": "api", "until": "2026-01-01T00:00:00Z", "by": "a", "reason": "x\x1b[2Jy"}], 0.0
    )
    assert "\x1b" not in line
