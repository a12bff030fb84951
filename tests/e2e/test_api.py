"""The operators' API of a live ``watchdogd run``: roles, the error format, idempotent votes, races.

The service's container does not exist, so a rollback that executes fails
fast at its container step; what matters here is who won and what ran.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DEPLOYER_TOKEN, TOKEN, VIEWER_TOKEN, Watchdogd

pytestmark = pytest.mark.integration


SERVICES = ("api", "web", "worker", "spare")
"""A deployment supersedes the one before it in its service: tests that need several open ones
use several services."""


def api_config(grace: str = "1h", mode: str = "auto") -> str:
    absent = f"watchdogd-absent-{uuid.uuid4().hex[:8]}"
    services = "".join(
        f"""
  {name}:
    container: {absent}-{name}
    images: [app]
    rollback:
      steps: [container]
      container: {{stop_timeout: 1s, healthy_timeout: 2s, settle: 100ms}}
    rules: []
"""
        for name in SERVICES
    )
    return f"""
defaults: {{interval: 1s, window: 10m, grace: {grace}, mode: {mode}}}
services:{services}"""


@pytest.fixture
def wd(watchdogd: Any) -> Watchdogd:
    daemon: Watchdogd = watchdogd(api_config())
    daemon.start()
    return daemon


def deploy(wd: Watchdogd, service: str = "api") -> dict[str, Any]:
    status, body = wd.post(
        "/v1/deployments", {"service": service, "image": "app:v2", "previous_image": "app:v1"}
    )
    assert status == 201, body
    return dict(body)


def propose(wd: Watchdogd, service: str = "api") -> dict[str, Any]:
    deployment = deploy(wd, service)
    status, body = wd.post(f"/v1/deployments/{deployment['id']}/rollback", {"reason": "by hand"})
    assert status == 202, body
    return dict(body)


def raw_post(
    wd: Watchdogd, path: str, data: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    request = urllib.request.Request(wd.url + path, data=data, method="POST")
    request.add_header("Content-Type", content_type)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_error(answer: tuple[int, Any], status: int, code: str | None = None) -> dict[str, Any]:
    got, body = answer
    assert got == status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, body
    return dict(error)


def mutations(wd: Watchdogd) -> list[tuple[str, dict[str, Any]]]:
    """Every mutating endpoint with a valid body, against real ids."""
    deployment = deploy(wd, "api")
    rollback = propose(wd, "web")
    other = propose(wd, "worker")
    return [
        ("/v1/deployments", {"service": "spare"}),
        (f"/v1/deployments/{deployment['id']}/promote", {}),
        (f"/v1/deployments/{rollback['deployment_id']}/rollback", {"reason": "r"}),
        (f"/v1/rollbacks/{rollback['id']}/ack", {}),
        (f"/v1/rollbacks/{rollback['id']}/veto", {"reason": "r"}),
        (f"/v1/rollbacks/{other['id']}/approve", {}),
    ]


def test_each_role_against_each_mutating_endpoint(wd: Watchdogd) -> None:
    endpoints = mutations(wd)
    for path, body in endpoints:
        assert_error(wd.post(path, body, token=VIEWER_TOKEN), 403, "forbidden")
        assert_error(wd.post(path, body, token=None), 401, "unauthorized")
        assert_error(wd.post(path, body, token="not-a-known-token-at-all"), 401, "unauthorized")
    for path, _ in endpoints[3:]:
        _, before = wd.get(path.rsplit("/", 1)[0])
        assert before["state"] == "pending"  # the refused votes changed nothing
    for path, body in endpoints:
        status, answer = wd.post(path, body)
        assert status in (200, 201, 202), (path, answer)
    assert wd.get("/v1/deployments", token=VIEWER_TOKEN)[0] == 200
    assert wd.get("/v1/openapi.json", token=None)[0] == 200
    _, audit = wd.get("/v1/audit?actor=victor", token=VIEWER_TOKEN)
    assert audit["items"] == []


def test_error_format(wd: Watchdogd) -> None:
    rollback = propose(wd)
    veto = f"/v1/rollbacks/{rollback['id']}/veto"
    assert_error(raw_post(wd, veto, b'{"reason": '), 400, "bad_request")
    assert_error(raw_post(wd, veto, b"[" * 100_000 + b"]" * 100_000), 400, "bad_request")
    assert_error(raw_post(wd, veto, b'{"reason": "r"}', "text/plain"), 400, "bad_request")
    assert_error(raw_post(wd, veto, b"x" * (2 << 20)), 400, "too_large")
    assert_error(wd.post(veto, {"reason": "r"}, token=None), 401)
    assert_error(wd.post(veto, {"reason": "r"}, token=VIEWER_TOKEN), 403)
    assert_error(wd.post("/v1/rollbacks/nope/veto", {"reason": "r"}), 404, "not_found")
    assert_error(wd.get("/v1/deployments/nope"), 404, "not_found")
    assert_error(wd.get("/v1/nothing-here"), 404)
    error = assert_error(wd.post(veto, {"reason": "r", "colour": "red"}), 422, "invalid")
    assert "unknown field" in error["message"] and "colour" in error["message"]
    assert_error(wd.post(veto, {"reason": 7}), 422, "invalid")
    assert_error(wd.post(veto, {"reason": "r", "mute_for": "forever"}), 422, "invalid")
    assert_error(wd.post(veto, {"reason": "r", "mute_for": "100000d"}), 422, "invalid")
    assert_error(wd.post(veto, ["reason"]), 422, "invalid")
    assert_error(raw_post(wd, veto, b'{"reason": "\\ud800"}'), 400, "bad_request")
    assert_error(wd.post("/v1/deployments", {"service": "nope"}), 422, "invalid")
    assert_error(wd.post("/v1/deployments", {"service": "api", "rehearse": "yes"}), 422, "invalid")
    assert_error(wd.post("/v1/deployments", {"service": "api", "window": "99999999h"}), 422, "invalid")
    assert_error(wd.post("/v1/deployments", {"service": ["api"]}), 422, "invalid")
    assert_error(wd.post(f"/v1/rollbacks/{rollback['id']}/approve", {"now": True}), 422, "invalid")
    assert_error(wd.get("/v1/audit?since=yesterday"), 400, "bad_request")
    # still pending: nothing above moved it
    assert wd.get(f"/v1/rollbacks/{rollback['id']}")[1]["state"] == "pending"

    assert wd.post(veto, {"reason": "noisy"})[0] == 200
    assert_error(wd.post(f"/v1/rollbacks/{rollback['id']}/approve"), 409, "conflict")
    executed = propose(wd)
    assert wd.post(f"/v1/rollbacks/{executed['id']}/approve")[0] == 200
    assert_error(wd.post(f"/v1/rollbacks/{executed['id']}/veto", {"reason": "late"}), 409, "conflict")


def test_ack_and_approve_are_idempotent(wd: Watchdogd) -> None:
    rollback = propose(wd)
    path = f"/v1/rollbacks/{rollback['id']}"
    first = wd.post(path + "/ack")
    second = wd.post(path + "/ack")
    assert first[0] == second[0] == 200
    assert first[1]["state"] == second[1]["state"] == "pending"
    status, approved = wd.post(path + "/approve")
    assert status == 200 and approved["state"] in ("executing", "failed", "succeeded"), approved
    again, body = wd.post(path + "/approve")
    assert again == 200 and body["state"] in ("executing", "failed", "succeeded")
    assert wd.post(path + "/ack")[0] == 200
    done = wd.wait_for(
        "the rollback to finish", lambda: wd.get(path)[1]["state"] in ("failed", "succeeded"), 30
    )
    assert done
    _, audit = wd.get(f"/v1/audit?deployment={rollback['deployment_id']}")
    actions = [e["action"] for e in audit["items"]]
    assert actions.count("rollback_started") == 1
    assert actions.count("ack") == 3


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_veto_and_approve_race_exactly_one_wins(watchdogd: Any) -> None:
    wd: Watchdogd = watchdogd(api_config(grace="1s"))
    wd.start()
    outcomes: list[tuple[int, int, str]] = []
    for round_ in range(12):
        rollback = propose(wd)
        path = f"/v1/rollbacks/{rollback['id']}"
        answers: dict[str, tuple[int, Any]] = {}
        barrier = threading.Barrier(2)

        def vote(
            kind: str, body: dict[str, Any], path: str = path, answers: Any = answers, barrier: Any = barrier
        ) -> None:
            barrier.wait()
            answers[kind] = wd.post(f"{path}/{kind}", body)

        # the votes land around the end of the veto window, where the timer races them too
        time.sleep(max(0.0, when(rollback["execute_at"]) - time.time() - 0.02 * (round_ % 4)))
        threads = [
            threading.Thread(target=vote, args=("veto", {"reason": "race"})),
            threading.Thread(target=vote, args=("approve", {})),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        veto, approve = answers["veto"], answers["approve"]
        assert sorted([veto[0], approve[0]]) == [200, 409], (veto, approve)
        final = wd.wait_for(
            "a final state",
            lambda path=path: (r := wd.get(path)[1])["state"] in ("vetoed", "failed", "succeeded") and r,
            30,
        )
        if veto[0] == 200:
            assert veto[1]["state"] == "vetoed" and final["state"] == "vetoed", (veto, final)
            assert final["started_at"] is None
            assert all(s["state"] == "pending" and s["started_at"] is None for s in final["steps"]), final
            assert_error(approve, 409, "conflict")
        else:
            assert approve[1]["state"] in ("executing", "failed", "succeeded"), approve
            assert final["state"] in ("failed", "succeeded") and final["started_at"] is not None, final
            assert_error(veto, 409, "conflict")
        _, audit = wd.get(f"/v1/audit?deployment={rollback['deployment_id']}")
        started = [e for e in audit["items"] if e["action"] == "rollback_started"]
        assert len(started) == (0 if veto[0] == 200 else 1), audit
        outcomes.append((veto[0], approve[0], final["state"]))
    assert wd.stop() == 0


def test_repeated_bad_tokens_are_slowed_down_and_logged(wd: Watchdogd) -> None:
    timings = []
    for _ in range(8):
        started = time.monotonic()
        status, _ = wd.get("/v1/deployments", token="guessing-0000000000")
        timings.append(time.monotonic() - started)
        assert status == 401
    assert max(timings[:5]) < 0.2, timings  # the first few cost nothing
    assert timings[-1] >= 0.4, timings  # then each answer waits longer
    assert 1 <= wd.log().count('"bad_token"') <= 2  # one line per kind of refusal per interval
    started = time.monotonic()
    assert wd.get("/v1/deployments")[0] == 200  # a good token from the same address: at once
    assert time.monotonic() - started < 0.2
    started = time.monotonic()
    assert wd.get("/v1/deployments", token="guessing-0000000000")[0] == 401
    assert time.monotonic() - started >= 0.4  # and it cleared nothing for the guesser


def test_tls_when_configured(watchdogd: Any, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    daemon: Watchdogd = watchdogd(api_config())
    daemon.tls = (cert, key)
    daemon.start()
    assert daemon.get("/v1/deployments")[0] == 200
    with pytest.raises(OSError):  # plain HTTP is not spoken
        urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=5)


def keyed_post(wd: Watchdogd, key: str, image: str) -> tuple[int, Any]:
    body = json.dumps({"service": "api", "image": image, "previous_image": "app:v1"}).encode()
    request = urllib.request.Request(wd.url + "/v1/deployments", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_retried_registration_answers_the_same_deployment(wd: Watchdogd) -> None:
    status, first = keyed_post(wd, "pipeline-1234-attempt", "app:v2")
    assert status == 201, first
    status, again = keyed_post(wd, "pipeline-1234-attempt", "app:v2")
    assert status == 201 and again["id"] == first["id"], again
    assert [d["id"] for d in wd.get("/v1/deployments")[1]["items"]] == [first["id"]]
    assert_error(keyed_post(wd, "bad key with spaces", "app:v2"), 400, "bad_request")


def test_a_newer_deployment_supersedes_and_cancels_the_open_proposal(wd: Watchdogd) -> None:
    rollback = propose(wd)
    newer = deploy(wd)
    old = wd.get(f"/v1/deployments/{rollback['deployment_id']}")[1]
    assert old["state"] == "superseded", old
    cancelled = wd.get(f"/v1/rollbacks/{rollback['id']}")[1]
    assert cancelled["state"] == "cancelled" and newer["id"] in cancelled["error"], cancelled
    assert_error(wd.post(f"/v1/rollbacks/{rollback['id']}/approve", {}), 409, "conflict")


def test_a_deployer_registers_deployments_and_votes_nothing(wd: Watchdogd) -> None:
    body = {"service": "api", "image": "app:v2", "previous_image": "app:v1"}
    status, deployment = wd.post("/v1/deployments", body, token=DEPLOYER_TOKEN)
    assert status == 201, deployment
    rollback = propose(wd, "web")
    for path, payload in [
        (f"/v1/rollbacks/{rollback['id']}/veto", {"reason": "r"}),
        (f"/v1/rollbacks/{rollback['id']}/approve", {}),
        (f"/v1/deployments/{deployment['id']}/rollback", {"reason": "r"}),
        (f"/v1/deployments/{deployment['id']}/promote", {}),
    ]:
        assert_error(wd.post(path, payload, token=DEPLOYER_TOKEN), 403, "forbidden")
