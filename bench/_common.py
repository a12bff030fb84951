"""Helpers shared by the benchmarks that run ``watchdogd run`` as a process.

Everything listens on 127.0.0.1; every process started here is stopped by its PID.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-operator-token-0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# --- /proc -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may hold spaces; fields resume after it.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in KiB, from ``/proc/PID/status``."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@dataclass
class Usage:
    """CPU share and memory of a process over a measured span."""

    seconds: float
    cpu: float
    rss_mib: float
    peak_mib: float
    samples: list[float] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.cpu / self.seconds if self.seconds > 0 else 0.0


def measure(pid: int, seconds: float, every: float = 5.0) -> Usage:
    """Watch ``pid`` for ``seconds``: CPU used, the last and the peak RSS."""
    cpu_before = cpu_seconds(pid)
    began = time.monotonic()
    rss: list[float] = []
    steps = int(seconds / every) + 2
    for _ in range(steps):
        left = seconds - (time.monotonic() - began)
        if left <= 0:
            break
        time.sleep(min(every, left))
        rss.append(memory_kib(pid)["VmRSS"] / 1024)
    wall = time.monotonic() - began
    cpu = cpu_seconds(pid) - cpu_before
    memory = memory_kib(pid)
    return Usage(wall, cpu, memory["VmRSS"] / 1024, memory["VmHWM"] / 1024, rss)


# --- watchdogd run -------------------------------------------------------------------------


class WatchdogdProcess:
    """A ``watchdogd run`` process with a config file in ``workdir``."""

    def __init__(
        self, workdir: Path, body: str, log_level: str = "warning", python: str = sys.executable
    ) -> None:
        self.workdir = workdir
        self.python = python  # runs ``-m watchdogd`` from the repository root: the working tree's code
        self.port = free_port()
        self.body = body
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "watchdogd.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    def start(self, timeout: float = 60.0, command: list[str] | None = None) -> None:
        tokens = self.workdir / "tokens.yaml"
        tokens.write_text(f"tokens:\n  - {{name: bench, role: operator, token: {TOKEN}}}\n")
        config = self.workdir / "watchdogd.yaml"
        config.write_text(
            f"server: {{listen: '127.0.0.1:{self.port}', tokens_file: {tokens}}}\n"
            f"state: {{url: 'sqlite:///{self.workdir / 'state.db'}'}}\n"
            f"logging: {{level: {self.log_level}, format: json}}\n" + self.body
        )
        argv = command or [self.python, "-m", "watchdogd", "run", "--config", str(config)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"watchdogd exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _ = self.request("GET", "/readyz", token=None)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"watchdogd not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
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
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def register(self, service: str, previous_image: str | None = "app:v1") -> dict[str, Any]:
        """An open deployment of ``service``, through the API (``previous_image`` None: left out)."""
        body: dict[str, Any] = {"service": service, "image": "app:v2"}
        if previous_image is not None:
            body["previous_image"] = previous_image
        status, body = self.request("POST", "/v1/deployments", body)
        if status != 201:
            raise RuntimeError(f"registering {service}: HTTP {status} {body}")
        return dict(body)


# --- a webhook receiver ----------------------------------------------------------------------


class Receiver:
    """Records the arrival time (``time.time()``) and body of every POST, in a thread."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, Any]] = []
        self.event = threading.Event()
        arrivals, event = self.arrivals, self.event

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                arrivals.append((at, body))
                event.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def first(self) -> float | None:
        return self.arrivals[0][0] if self.arrivals else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
