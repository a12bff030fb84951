"""The sd_notify protocol against real datagram sockets, with no systemd around."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from watchdogd import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, {"NOTIFY_SOCKET": str(path)}
    sock.close()


def test_ready_with_status_is_one_datagram(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert sdnotify.ready("watching 2 services", environ=env)
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=watching 2 services"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (sdnotify.watchdog, "WATCHDOG=1"),
        (sdnotify.stopping, "STOPPING=1"),
    ],
)
def test_single_messages(
    listener: tuple[socket.socket, dict[str, str]], call: Callable[..., bool], expected: str
) -> None:
    sock, env = listener
    assert call(environ=env)
    assert sock.recv(4096).decode() == expected


def test_status_stays_on_one_line(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert sdnotify.status("two\nlines", environ=env)
    assert sock.recv(4096).decode() == "STATUS=two lines"


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading(environ=env)
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_namespace_socket() -> None:
    name = f"watchdogd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sdnotify.socket_address({"NOTIFY_SOCKET": "@" + name}) == "\0" + name
        assert sdnotify.watchdog(environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/path"])
def test_no_socket_is_a_no_op(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.socket_address() is None
    assert not sdnotify.ready("x")
    assert not sdnotify.status("x")
    assert not sdnotify.watchdog()
    assert not sdnotify.stopping()


def test_a_missing_socket_is_not_an_error(tmp_path: Path) -> None:
    assert not sdnotify.ready(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})


def test_a_full_socket_drops_messages_without_blocking(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    _, env = listener  # nobody reads: the receive queue fills up
    started = time.monotonic()
    sent = [sdnotify.watchdog(environ=env) for _ in range(5000)]
    assert time.monotonic() - started < 5
    assert sent[0]
    assert not all(sent)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env) == expected
