"""The Dockerfile, read as instructions (no image is built here)."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation runs off the end of the file"
    parsed = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        parsed.append((keyword.upper(), args.strip()))
    return parsed


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for keyword, value in instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "ARG" and not found:
            name, _, default = value.partition("=")
            args[name] = default
        if keyword == "FROM":
            value = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
            found.append([])
        assert found or keyword in ("ARG",), f"{keyword} before the first FROM"
        if found:
            found[-1].append((keyword, value))
    return found


def final(keyword: str) -> list[str]:
    return [value for kw, value in stages()[-1] if kw == keyword]


def test_multi_stage_build_from_a_wheel() -> None:
    builder, runtime = stages()
    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    assert runtime[0][1].startswith("python:3.11-slim")
    assert any(kw == "RUN" and "pip wheel" in v for kw, v in builder)
    [install] = [v for kw, v in runtime if kw == "RUN" and "pip install" in v]
    assert "--no-index" in install and "from=builder" in install and "watchdogd" in install
    copied = [v for kw, v in runtime if kw == "COPY"]
    assert not copied, "the runtime gets wheels from the builder, not the source"


def test_runs_as_a_non_root_user() -> None:
    [user] = final("USER")
    name, _, group = user.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0")
    [run] = [v for v in final("RUN") if "useradd" in v]
    assert f"--uid {name}" in run
    # the chart's securityContext runs the same uid
    values = (ROOT / "helm" / "watchdogd" / "values.yaml").read_text()
    assert f"runAsUser: {name}" in values


def test_volumes_port_entrypoint_and_command() -> None:
    [volume] = final("VOLUME")
    assert set(json.loads(volume)) == {"/etc/watchdogd", "/var/lib/watchdogd"}
    assert final("EXPOSE") == ["9464"]
    [entrypoint] = final("ENTRYPOINT")
    assert json.loads(entrypoint) == ["watchdogd"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "watchdogd" in scripts
    [cmd] = final("CMD")
    assert json.loads(cmd) == ["run", "--config", "/etc/watchdogd/watchdogd.yaml"]


def healthcheck_command() -> list[str]:
    [check] = final("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv: list[str] = json.loads(command)
    return argv


class Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_healthcheck_asks_healthz_with_python_only(server: http.server.ThreadingHTTPServer) -> None:
    argv = healthcheck_command()
    assert argv[:2] == ["python", "-c"], "slim has no curl"
    code = argv[2]
    assert "http://127.0.0.1:9464/healthz" in code
    # run the probe as the container would, against a stand-in on a free port
    port = server.server_address[1]
    probe = [sys.executable, "-c", code.replace(":9464/", f":{port}/")]
    Answer.status = 200
    assert subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    Answer.status = 503
    assert subprocess.run(probe, capture_output=True, timeout=10).returncode != 0
    server.shutdown()
    server.server_close()
    assert subprocess.run(probe, capture_output=True, timeout=10).returncode != 0


def test_dockerignore_keeps_the_context_small_but_sufficient() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests"} <= ignored
    copied = [v.split()[0] for kw, v in stages()[0] if kw == "COPY"]
    for path in [*copied, "watchdogd", "pyproject.toml", "README.md"]:
        assert path not in ignored, f"{path} is needed by the build"
