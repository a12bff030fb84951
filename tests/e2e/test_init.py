"""From an empty directory to a running daemon: ``watchdogd init``, ``check``, ``run``, ``ctl``.

And what ``run`` says when it cannot start: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT
from tests.testbed.containers import free_port

TOKEN_LINE = re.compile(r"^  (\S+) +(admin|operator|deployer) +(\S+)$", re.MULTILINE)


def watchdogd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
    return subprocess.run(
        [sys.executable, "-m", "watchdogd", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def init(directory: Path) -> dict[str, str]:
    """``watchdogd init DIRECTORY``; the printed tokens by role."""
    done = watchdogd("init", str(directory), cwd=directory.parent)
    assert (done.returncode, done.stderr) == (0, ""), done
    return {role: token for _, role, token in TOKEN_LINE.findall(done.stdout)}


def listen_on(config: Path, port: int) -> None:
    text = config.read_text()
    assert text.count("listen: 127.0.0.1:9464") == 1
    config.write_text(text.replace("listen: 127.0.0.1:9464", f"listen: 127.0.0.1:{port}"))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"watchdogd exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"watchdogd not ready within {timeout}s:\n{log.read_text()}")


def test_init_check_run_and_ctl_in_an_empty_directory(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    here = tmp_path / "guard"
    tokens = init(here)
    assert sorted(tokens) == ["admin", "deployer", "operator"]
    assert sorted(p.name for p in here.iterdir()) == ["tokens.yaml", "watchdogd.yaml"]

    checked = watchdogd("check", "--config", "watchdogd.yaml", cwd=here)
    assert checked.returncode == 0, checked
    assert checked.stdout.startswith("watchdogd.yaml: valid\n")

    port = free_port()
    listen_on(here / "watchdogd.yaml", port)
    log = here / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "watchdogd", "run", "--config", "watchdogd.yaml"],
            cwd=here,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    ready(url, process, log)
    assert (here / "state.db").exists()

    status = watchdogd("ctl", "--url", url, "--token", tokens["operator"], "status", cwd=here)
    assert (status.returncode, status.stdout, status.stderr) == (0, "no deployments\n", "")
    deployed = watchdogd(
        "ctl", "--url", url, "--token", tokens["deployer"], "--json", "deploy", "--service", "app", cwd=here
    )
    assert deployed.returncode == 0, deployed
    deployment = json.loads(deployed.stdout)["id"]
    promoted = watchdogd("ctl", "--url", url, "--token", tokens["admin"], "promote", deployment, cwd=here)
    assert (promoted.returncode, promoted.stdout) == (0, f"deployment {deployment} of app: promoted\n")

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, log.read_text()


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init(tmp_path / "guard")
    before = {p.name: p.read_text() for p in (tmp_path / "guard").iterdir()}
    again = watchdogd("init", "guard", cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr == (
        "watchdogd init: watchdogd.yaml and tokens.yaml already exist in guard:"
        " nothing written (move them away, or init another directory)\n"
    )
    assert {p.name: p.read_text() for p in (tmp_path / "guard").iterdir()} == before


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    init(tmp_path / "guard")
    config = tmp_path / "guard" / "watchdogd.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen_on(config, port)
        done = watchdogd("run", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        f"{config}: server.listen: cannot listen on 127.0.0.1:{port}: address already in use\n"
    )
    # the daemon had opened: it was closed again, as on a stop
    events = [json.loads(line)["event"] for line in done.stdout.splitlines()]
    assert events[-2:] == ["stopping", "stopped"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("tokens_file: tokens.yaml", "tokens_file: elsewhere"),
            "{dir}/elsewhere: cannot read: Is a directory",
        ),
        (
            ("tokens_file: tokens.yaml", "tokens_file: tokens.yaml\n  tls: {cert: cert.pem, key: key.pem}"),
            "{config}: server.tls.cert: cannot read {dir}/cert.pem: no such file or directory",
        ),
        (
            (
                "tokens_file: tokens.yaml",
                "tokens_file: tokens.yaml\n  tls: {cert: tokens.yaml, key: tokens.yaml}",
            ),
            "{config}: server.tls: cannot use {dir}/tokens.yaml with {dir}/tokens.yaml:"
            " not a PEM certificate and key",
        ),
    ],
    ids=["tokens-file", "tls-cert", "tls-not-pem"],
)
def test_files_it_cannot_read_are_one_line_and_exit_2(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    here = tmp_path / "guard"
    init(here)
    (here / "elsewhere").mkdir()
    config = here / "watchdogd.yaml"
    config.write_text(config.read_text().replace(*edit))
    done = watchdogd("run", "--config", str(config), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == message.format(dir=here, config=config) + "\n"
    assert not (here / "state.db").exists()


def test_a_config_it_cannot_read_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = watchdogd("run", "--config", str(tmp_path), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"{tmp_path}: cannot read: Is a directory\n"
