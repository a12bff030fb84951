"""The API under abuse: with its caps reached, health checks and a veto still answer at once.

A live ``watchdogd run`` with a lowered file descriptor limit gets every
event stream its caps allow (and more), then 300 half-open sockets that
never finish their request headers. ``/healthz``, ``/readyz`` and a veto on
a real pending proposal must each answer within a second, the daemon must
stay under its descriptor limit, and its log must not grow per connection.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TOKEN, VIEWER_TOKEN, Watchdogd
from tests.e2e.test_api import api_config, propose

pytestmark = pytest.mark.integration

DAEMON_NOFILE = 256
"""The daemon's descriptor limit here: low enough that 300 sockets would exhaust it."""
IDLE_SOCKETS = 300
STREAMS_PER_TOKEN = 4
STREAMS = 6
HEADER_TIMEOUT = 2.0
SERVER_KEYS = f", max_streams: {STREAMS}, max_streams_per_token: {STREAMS_PER_TOKEN}" + (
    f", header_timeout: {HEADER_TIMEOUT:g}s"
)


class Capped(Watchdogd):
    """The daemon with small stream caps and a short header timeout in its ``server`` section."""

    def _tls_config(self) -> str:
        return super()._tls_config() + os.environ.get("WATCHDOGD_TEST_SERVER_KEYS", SERVER_KEYS)


@contextlib.contextmanager
def nofile(limit: int) -> Iterator[None]:
    """Processes started inside inherit a soft descriptor limit of ``limit``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_stream(wd: Watchdogd, token: str) -> tuple[socket.socket, int]:
    """A raw ``GET /v1/events`` left open; the socket and the status it was answered."""
    conn = socket.create_connection(("127.0.0.1", wd.port), timeout=5)
    conn.sendall(
        f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode("ascii")
    )
    head = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return conn, status


def timed(call: Any) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        answer = call()
    except OSError as exc:  # a timeout or a refused connection: the figure is what it cost
        answer = (0, repr(exc))
    return time.monotonic() - started, answer


def loudest(path: Path | None, since: int) -> list[tuple[str, int]]:
    """The log's events written after ``since`` bytes, most frequent first: what made it grow."""
    if path is None:
        return []
    with path.open("rb") as log:
        log.seek(since)
        lines = log.read().decode("utf-8", "replace").splitlines()
    counts: dict[str, int] = {}
    for line in lines:
        words = line.split()
        event = next((w for w in words if w.startswith("event=")), words[3] if len(words) > 3 else line[:60])
        counts[event] = counts.get(event, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])[:5]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_health_and_veto_answer_with_every_cap_reached(tmp_path: Path) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= IDLE_SOCKETS + 100, "this test's own process needs the descriptors it opens"
    wd = Capped(tmp_path, api_config())
    with nofile(DAEMON_NOFILE):
        wd.start()
    held: list[socket.socket] = []
    try:
        assert wd.process is not None
        proposal = propose(wd)
        log_before = wd.log_path.stat().st_size if wd.log_path else 0

        statuses = []
        for token in (VIEWER_TOKEN, VIEWER_TOKEN, TOKEN):
            for _ in range(STREAMS_PER_TOKEN):
                conn, status = open_stream(wd, token)
                held.append(conn)
                statuses.append(status)
        for _ in range(IDLE_SOCKETS):
            try:
                conn = socket.create_connection(("127.0.0.1", wd.port), timeout=2)
            except OSError:
                break  # the backlog is full: that is the point
            held.append(conn)
            if len(held) % 2:
                with contextlib.suppress(OSError):
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        time.sleep(0.5)

        health_took, health = timed(lambda: wd.get("/healthz", token=None))
        ready_took, ready = timed(lambda: wd.get("/readyz", token=None))
        veto_took, veto = timed(lambda: wd.post(f"/v1/rollbacks/{proposal['id']}/veto", {"reason": "abuse"}))
        open_fds = fds(wd.process.pid)
        log_growth = (wd.log_path.stat().st_size if wd.log_path else 0) - log_before
        print(
            f"\nabuse figures: healthz {health_took:.3f}s {health[0]}, readyz {ready_took:.3f}s {ready[0]}, "
            f"veto {veto_took:.3f}s {veto[0]}, daemon fds {open_fds}/{DAEMON_NOFILE}, "
            f"log +{log_growth} bytes, stream answers {statuses}"
        )
        assert health[0] == 200 and health_took < 1.0, (health_took, health)
        assert ready[0] == 200 and ready_took < 1.0, (ready_took, ready)
        assert veto[0] == 200 and veto[1]["state"] == "vetoed" and veto_took < 1.0, (veto_took, veto)
        # the caps: per token, then in all; over them a JSON 429, never a hang
        assert statuses == [200] * 4 + [429] * 4 + [200, 200, 429, 429], statuses
        assert open_fds < DAEMON_NOFILE - 16, open_fds
        # one line per kind of rejection, not one per socket
        assert log_growth < 50_000, (log_growth, loudest(wd.log_path, log_before))
    finally:
        for conn in held:
            conn.close()
        if wd.process is not None and wd.process.poll() is None:
            wd.process.kill()
            wd.process.wait(10)


def test_a_connection_that_sends_no_complete_headers_is_closed(tmp_path: Path) -> None:
    wd = Capped(tmp_path, api_config())
    wd.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", wd.port), timeout=10) as silent,
            socket.create_connection(("127.0.0.1", wd.port), timeout=10) as slow,
        ):
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert silent.recv(100) == b""  # closed by the server, with nothing sent
            assert slow.recv(100) == b""
            took = time.monotonic() - started
        assert HEADER_TIMEOUT - 0.5 < took < HEADER_TIMEOUT + 2, took
    finally:
        if wd.process is not None and wd.process.poll() is None:
            wd.process.kill()
            wd.process.wait(10)
