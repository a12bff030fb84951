"""``watchdogd run`` as a real process, with a config file, against the test bed."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.testbed.containers import free_port
from tests.testbed.exposition import metrics_handler

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "operator-token-0123456789"
VIEWER_TOKEN = "viewer-token-0123456789"
DEPLOYER_TOKEN = "deployer-token-0123456789"


@dataclass
class Watchdogd:
    """A ``watchdogd run`` process: start, ask its API, stop or kill it."""

    workdir: Path
    config_text: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    state_url: str = "sqlite:///state.db"
    tls: tuple[Path, Path] | None = None
    """Certificate and key: the API then speaks HTTPS only."""
    module: str = "watchdogd"
    """What ``python -m`` runs: a wrapper module can inject a fault around watchdogd."""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        tokens = self.workdir / "tokens.yaml"
        tokens.write_text(
            "tokens:\n"
            f"  - {{name: alice, role: operator, token: {TOKEN}}}\n"
            f"  - {{name: victor, role: viewer, token: {VIEWER_TOKEN}}}\n"
            f"  - {{name: ci, role: deployer, token: {DEPLOYER_TOKEN}}}\n"
        )
        config = self.workdir / "watchdogd.yaml"
        header = (
            f"server: {{listen: '127.0.0.1:{self.port}', tokens_file: tokens.yaml{self._tls_config()}}}\n"
            f"state: {{url: '{self.state_url}'}}\n"
            "logging: {level: info, format: json}\n"
        )
        config.write_text(header + self.config_text)
        return config

    def _tls_config(self) -> str:
        return f", tls: {{cert: '{self.tls[0]}', key: '{self.tls[1]}'}}" if self.tls else ""

    def start(self, env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        config = self.write_config()
        self.log_path = self.workdir / f"watchdogd-{int(time.time() * 1000)}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "run", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"watchdogd exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, _ = self.get("/readyz", token=None)
                if status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"watchdogd not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"watchdogd did not stop within {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def request(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        return self.request("GET", path, token=token)

    def post(self, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        return self.request("POST", path, body if body is not None else {}, token=token)

    def metric(self, name: str, **labels: str) -> float | None:
        _, text = self.get("/metrics", token=None)
        for line in str(text).splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
        return None

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})\n{self.log()}")


@pytest.fixture
def watchdogd(tmp_path: Path) -> Iterator[Any]:
    started: list[Watchdogd] = []

    def make(config_text: str) -> Watchdogd:
        daemon = Watchdogd(tmp_path, config_text)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(10)
    _release_holders(tmp_path)


def _release_holders(workdir: Path) -> None:
    """Remove the image holders the test's deployments left (a daemon stopped inside a window keeps them)."""
    database = workdir / "state.db"
    if not database.exists():
        return
    with contextlib.closing(sqlite3.connect(database)) as conn:
        try:
            ids = {row[0] for row in conn.execute("SELECT id FROM deployments")}
        except sqlite3.Error:
            return
    if not ids:
        return
    client = docker.from_env(timeout=30)
    try:
        for holder in client.containers.list(all=True, filters={"label": "org.watchdogd.keep=1"}):
            if holder.labels.get("org.watchdogd.keep.deployment") in ids:
                with contextlib.suppress(docker.errors.NotFound):
                    holder.remove(force=True)
    finally:
        client.close()


class LocalServer:
    """An HTTP server on 127.0.0.1, a free port, in a thread; ``url`` ends with ``path``."""

    def serve(self, handler: type[http.server.BaseHTTPRequestHandler], path: str) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(LocalServer):
    """A webhook receiver; ``bodies`` holds what it was sent."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                bodies.append(json.loads(self.rfile.read(length) or b"null"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.serve(Handler, "/hook")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


class Exporter(LocalServer):
    """A /metrics endpoint on 127.0.0.1; ``value(n)`` gives the gauge for the n-th scrape (from 0)."""

    def __init__(self, value: Callable[[int], float]) -> None:
        self.value = value
        self.scrapes = 0
        self.serve(metrics_handler(self.text), "/metrics")

    def text(self) -> str:
        number = self.value(self.scrapes)
        self.scrapes += 1
        return f"# TYPE errors gauge\nerrors {number}\n"


@pytest.fixture
def exporter() -> Iterator[Callable[[Callable[[int], float]], Exporter]]:
    made: list[Exporter] = []

    def make(value: Callable[[int], float]) -> Exporter:
        made.append(Exporter(value))
        return made[-1]

    yield make
    for one in made:
        one.close()


def scrape_config(url: str, defaults: str, rule: str = "", notify: str = "") -> str:
    """Service ``api`` with one rule, ``errors > 5`` on the gauge ``errors`` scraped from ``url``.

    ``defaults`` and ``rule`` are flow-mapping items (``grace: 1s, mode: dry-run``;
    ``for: 6s``); the rollback is a verify step only, nothing to touch.
    """
    rule = f"{rule}, " if rule else ""
    return f"""
defaults: {{interval: 500ms, {defaults}}}
sources:
  app: {{type: scrape, url: "{url}", timeout: 1s}}
{notify}services:
  api:
    rollback: {{steps: [verify]}}
    rules:
      - {{name: errors, source: app, metric: errors, condition: "> 5", {rule}action: rollback}}
"""
