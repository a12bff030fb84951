"""The API against a hostile client, in memory: bad header bytes, token guessing next to a
legitimate operator, the audit trail's newest entries, a failing store, security headers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdogd.api import THROTTLE, create_app
from watchdogd.auth import Throttle, Tokens
from watchdogd.daemon import Daemon
from watchdogd.errors import StoreError
from watchdogd.testing import FakeClock, NoDocker, config_of, memory_store

OPERATOR = "operator-token-0123456789"
VIEWER = "viewer-token-0123456789"
CONFIG = """
defaults: {interval: 1s, grace: 60s, window: 1h}
services:
  api:
    rollback: {steps: [verify]}
"""


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    clock = FakeClock()
    made = await Daemon.open(
        config_of(CONFIG), store=await memory_store(clock), clock=clock, polling=False, docker=NoDocker()
    )
    yield made
    await made.close(2)


@pytest.fixture
async def client(tmp_path: Path, daemon: Daemon) -> AsyncIterator[TestClient[Any, Any]]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{name: alice, role: operator, token: {OPERATOR}}}\n"
        f"  - {{name: victor, role: viewer, token: {VIEWER}}}\n"
    )
    made: TestClient[Any, Any] = TestClient(TestServer(create_app(daemon, Tokens.load(tokens))))
    await made.start_server()
    yield made
    await made.close()


def raw(port: int, head: bytes) -> int:
    """The status of the answer to ``head`` (a whole request head) sent on a fresh socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe" + OPERATOR.encode(),
        b"Authorization: \xc3\x28 " + OPERATOR.encode(),
        b"Authorization: Bearer " + OPERATOR.encode() + b"\r\nIdempotency-Key: \xff\xff",
        b"Authorization: Bearer " + OPERATOR.encode() + b"\r\nX-Anything: \xed\xa0\x80",
    ],
)
async def test_bad_bytes_in_a_header_answer_4xx(client: TestClient[Any, Any], header: bytes) -> None:
    port = client.server.port
    assert port is not None
    for method, path in (
        (b"GET", b"/v1/deployments"),
        (b"POST", b"/v1/deployments"),
        (b"GET", b"/v1/events"),
    ):
        head = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header
        head += b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        status = await asyncio.to_thread(raw, port, head)
        assert 400 <= status < 500, (header, path, status)


async def test_a_valid_token_is_never_slowed_down_by_a_guesser_on_its_address(
    client: TestClient[Any, Any],
) -> None:
    for n in range(8):
        answer = await client.get("/v1/deployments", headers={"Authorization": f"Bearer guess-{n:020d}"})
        assert answer.status == 401
    started = time.monotonic()
    answer = await client.get("/v1/deployments", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert answer.status == 200 and time.monotonic() - started < 0.1
    # the valid request did not clear the guesser's record: its next guess still waits
    started = time.monotonic()
    answer = await client.get("/v1/deployments", headers={"Authorization": "Bearer guess-again-000000000"})
    assert answer.status == 401 and time.monotonic() - started >= 0.2


def test_the_throttle_keys_by_address_and_token_prefix() -> None:
    throttle = Throttle(free=2, base=1.0, ceiling=4.0)
    for n in range(4):
        throttle.fail("10.0.0.9", "guessAAAA" + str(n), float(n))
    assert throttle.delay("10.0.0.9", "guessAAAA-next", 5.0) > 0
    # the same prefix from another address is slowed too: one family of guesses spread out
    assert throttle.delay("10.0.0.10", "guessAAAA-next", 5.0) > 0
    assert throttle.delay("10.0.0.10", "something-else", 5.0) == 0.0


def test_the_throttle_bounds_how_many_wait_at_once() -> None:
    throttle = Throttle(max_waiting=2)
    assert throttle.enter() and throttle.enter()
    assert not throttle.enter()  # beyond: answered at once with 429
    throttle.leave()
    assert throttle.enter()


async def test_many_guessers_at_once_get_429_at_once(client: TestClient[Any, Any]) -> None:
    api_throttle = client.server.app[THROTTLE]
    api_throttle.max_waiting = 3
    for n in range(8):
        await client.get("/v1/deployments", headers={"Authorization": f"Bearer guess-{n:020d}"})
    started = time.monotonic()
    answers = await asyncio.gather(
        *(client.get("/v1/rollbacks", headers={"Authorization": f"Bearer more-{n:020d}"}) for n in range(10))
    )
    statuses = sorted(a.status for a in answers)
    assert statuses.count(429) >= 7, statuses
    rejected = next(a for a in answers if a.status == 429)
    assert (await rejected.json())["error"]["code"] == "too_many_requests"
    assert "Retry-After" in rejected.headers
    assert time.monotonic() - started < 10


async def test_the_audit_trail_is_newest_first_with_a_cursor(
    client: TestClient[Any, Any], daemon: Daemon
) -> None:
    for n in range(7):
        await daemon.store.audit("alice", f"action-{n}", {"n": n})
    auth = {"Authorization": f"Bearer {VIEWER}"}
    first = await (await client.get("/v1/audit?limit=3", headers=auth)).json()
    assert [e["action"] for e in first["items"]] == ["action-6", "action-5", "action-4"]
    assert first["next"] == first["items"][-1]["seq"]
    second = await (await client.get(f"/v1/audit?limit=3&before={first['next']}", headers=auth)).json()
    assert [e["action"] for e in second["items"]] == ["action-3", "action-2", "action-1"]
    third = await (await client.get(f"/v1/audit?limit=3&before={second['next']}", headers=auth)).json()
    assert [e["action"] for e in third["items"]] == ["action-0"]
    assert third["next"] is None
    for bad in ("limit=0", "limit=1001", "limit=x", "before=-1", "before=x"):
        answer = await client.get(f"/v1/audit?{bad}", headers=auth)
        assert answer.status == 400, bad
        assert (await answer.json())["error"]["code"] == "bad_request"


async def test_a_failing_store_answers_503_and_readyz_says_so(
    client: TestClient[Any, Any], daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.health.started = True

    async def locked(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("state store state.db: database is locked")

    monkeypatch.setattr(daemon.store, "deployments", locked)
    answer = await client.get("/v1/deployments", headers={"Authorization": f"Bearer {VIEWER}"})
    assert answer.status == 503
    assert (await answer.json())["error"]["code"] == "store_unavailable"
    assert int(answer.headers["Retry-After"]) >= 1
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "store" in (await ready.json())["reason"]


async def test_every_answer_carries_the_security_headers(client: TestClient[Any, Any]) -> None:
    auth = {"Authorization": f"Bearer {VIEWER}"}
    for path, headers in (
        ("/healthz", {}),
        ("/v1/deployments", auth),
        ("/v1/deployments", {}),
        ("/v1/nope", auth),
        ("/metrics", {}),
    ):
        answer = await client.get(path, headers=headers)
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["X-Frame-Options"] == "DENY", path
        assert answer.headers["Referrer-Policy"] == "no-referrer", path
        assert answer.headers["Content-Security-Policy"] == "default-src 'none'", path
        assert answer.headers["Cache-Control"] == "no-store", path
