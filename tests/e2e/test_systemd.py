"""watchdogd under systemd: the notify protocol of a real ``watchdogd run``, and the unit file.

The process is given a fake ``NOTIFY_SOCKET`` (a datagram socket bound here), as
systemd would give it; what it sends there is what systemd would see.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Watchdogd

UNIT = ROOT / "systemd" / "watchdogd.service"
DOCKER_DROP_IN = ROOT / "systemd" / "watchdogd.service.d" / "docker.conf"

CONFIG = """
sources:
  self: {type: http, url: "http://127.0.0.1:1/health", timeout: 500ms}
services:
  api:
    rollback: {steps: [verify]}
    rules:
      - {name: health, source: self, field: up, condition: "< 1", action: notify}
"""


@dataclass
class Message:
    at: float
    fields: dict[str, str]
    readyz: int | None = None
    """/readyz's status, asked the moment READY=1 arrived."""


@dataclass
class NotifySocket:
    """What systemd would read from ``NOTIFY_SOCKET``, collected in a thread."""

    path: Path
    on_ready: Callable[[], int]
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            message = Message(time.monotonic(), fields)
            if fields.get("READY") == "1":
                message.readyz = self.on_ready()
            self.messages.append(message)

    def with_key(self, key: str, value: str | None = None) -> list[Message]:
        return [m for m in self.messages if key in m.fields and (value is None or m.fields[key] == value)]

    def wait_for(
        self, key: str, value: str | None = None, count: int = 1, timeout: float = 10
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_key(key, value)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} x {key}={value} not sent within {timeout}s: {self.messages}")

    def close(self) -> None:
        self.closed.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Watchdogd], NotifySocket]]:
    # the child inherits this environment: nothing of a systemd running the tests leaks in
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    made: list[NotifySocket] = []

    def make(daemon: Watchdogd) -> NotifySocket:
        def readyz() -> int:
            return int(daemon.get("/readyz", token=None)[0])

        listener = NotifySocket(tmp_path / "notify.sock", readyz)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def test_ready_status_watchdog_and_stopping(
    watchdogd: Callable[[str], Watchdogd], notify_socket: Callable[[Watchdogd], NotifySocket]
) -> None:
    daemon = watchdogd(CONFIG)
    systemd = notify_socket(daemon)
    daemon.start(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"})

    [ready] = systemd.wait_for("READY", "1")
    assert ready.readyz == 200, "READY=1 was sent before /readyz answered 200"
    assert ready.fields["STATUS"] == "watching 1 services, 0 open deployments"

    # WatchdogSec=1s: a ping every half second while the loop is healthy
    time.sleep(2.0)
    pings = [m for m in systemd.with_key("WATCHDOG", "1") if ready.at <= m.at <= ready.at + 2.0]
    assert len(pings) >= 2, systemd.messages

    assert daemon.stop() == 0
    [stopping] = systemd.wait_for("STOPPING", "1", timeout=5)
    assert stopping.at > ready.at
    assert not systemd.with_key("READY", "0")


def test_no_watchdog_pings_unless_asked_and_reload_reports(
    watchdogd: Callable[[str], Watchdogd], notify_socket: Callable[[Watchdogd], NotifySocket]
) -> None:
    daemon = watchdogd(CONFIG)
    systemd = notify_socket(daemon)
    daemon.start(env={"NOTIFY_SOCKET": str(systemd.path)})
    systemd.wait_for("READY", "1")

    # SIGHUP: RELOADING=1, then READY=1 again once the new config runs
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    systemd.wait_for("RELOADING", "1")
    readies = systemd.wait_for("READY", "1", count=2)
    assert readies[1].at >= systemd.with_key("RELOADING", "1")[0].at
    assert "MONOTONIC_USEC" in systemd.with_key("RELOADING", "1")[0].fields

    time.sleep(1.0)
    assert daemon.stop() == 0
    systemd.wait_for("STOPPING", "1", timeout=5)
    assert not systemd.with_key("WATCHDOG"), "pinged without WATCHDOG_USEC"


# --- the unit file ---------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections, repeatable keys, comments, no interpolation."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number} is not KEY=VALUE in a section: {raw!r}"
        assert key.strip().isidentifier(), f"line {number}: bad key {key!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


REQUIRED_SERVICE = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/usr/bin/watchdogd run --config /etc/watchdogd/watchdogd.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "TimeoutStopSec": "45",
    "User": "watchdogd",
    "Group": "watchdogd",
    "StateDirectory": "watchdogd",
    "ReadWritePaths": "/var/lib/watchdogd",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
}


def check_unit_keys() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    for key, value in REQUIRED_SERVICE.items():
        assert service.get(key) == value, f"[Service] {key}={service.get(key)!r}, want {value!r}"
    assert "SupplementaryGroups" not in service, "Docker access belongs in the drop-in only"
    assert not [v for vs in unit["Service"].values() for v in vs if "docker" in v.lower()]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # the daemon's own stop deadline must fit in systemd's
    from watchdogd.runner import STOP_DEADLINE

    assert int(service["TimeoutStopSec"]) > STOP_DEADLINE
    # room for the API's default connection cap beside the store's and sources' descriptors
    from watchdogd.config.models import ServerConfig
    from watchdogd.connections import RESERVED_FDS

    assert int(service["LimitNOFILE"]) >= ServerConfig().max_connections + 4 * RESERVED_FDS

    drop_in = parse_unit(DOCKER_DROP_IN.read_text())
    assert drop_in["Service"] == {"SupplementaryGroups": ["docker"]}
    assert "container" in DOCKER_DROP_IN.read_text()


def test_unit_file_has_the_required_settings() -> None:
    check_unit_keys()


def test_unit_file_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` when the machine has it; else the parsed keys, checked by hand."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        check_unit_keys()
        return
    # verify wants ExecStart's binary to exist; the rest of the unit is checked as shipped
    text = UNIT.read_text().replace("ExecStart=/usr/bin/watchdogd ", "ExecStart=/bin/true ")
    assert text != UNIT.read_text()
    (tmp_path / "watchdogd.service").write_text(text)
    (tmp_path / "watchdogd.service.d").mkdir()
    shutil.copy(DOCKER_DROP_IN, tmp_path / "watchdogd.service.d" / "docker.conf")
    unit = str(tmp_path / "watchdogd.service")

    def verify(level: str) -> str:
        result = subprocess.run(
            [analyze, "verify", unit],
            capture_output=True,
            text=True,
            timeout=25,
            env={**os.environ, "SYSTEMD_LOG_LEVEL": level},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    # at the default level verify only speaks of problems (unknown keys, bad values)
    problems = [line for line in verify("notice").splitlines() if "watchdogd" in line]
    assert not problems, "\n".join(problems)
    assert "watchdogd.service.d/docker.conf" in verify("debug"), "the drop-in was not loaded"
