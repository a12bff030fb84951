"""Secrets stay out of the logs and the API; oversized bodies are refused before they are read."""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.conftest import TOKEN, VIEWER_TOKEN, Receiver, Watchdogd
from tests.e2e.test_daemon import Story, config_for, first_rollback_in
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import AppBehaviour

pytestmark = pytest.mark.integration

DB_PASSWORD = "pg-pass-5f1c9e7d2b"
HOOK_TOKEN = "hook-token-8d3a61c0e4"
HEADER_TOKEN = "scrape-header-0b7e52f9a1"


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_a_whole_bad_deploy_logs_no_secret(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str, receiver: Receiver
) -> None:
    secret_dsn = with_password(pg_dsn, DB_PASSWORD)  # the test bed trusts, the password is carried along
    story = Story(container_registry, secret_dsn)
    await story.start_v1()
    config = config_for(story.name, story.port, secret_dsn)
    config = config.replace(
        "timeout: 2s}\n  health:",
        f'timeout: 2s, headers: {{X-Token: "{HEADER_TOKEN}"}}}}\n  health:',
        1,
    )
    assert HEADER_TOKEN in config
    config += f'notify:\n  - {{type: webhook, url: "{receiver.url}?token={HOOK_TOKEN}", format: json}}\n'
    wd: Watchdogd = watchdogd(config)
    wd.state_url = secret_dsn
    wd.start(env={"WATCHDOGD_LOG_LEVEL": "debug"})
    assert wd.get("/v1/deployments", token="wrong-" + TOKEN)[0] == 401
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    story.register(wd)
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", done["error"]
    answers = [
        wd.get(path, token=VIEWER_TOKEN)[1] for path in ("/v1/deployments", "/v1/rollbacks", "/v1/audit")
    ]
    answers.append(wd.get("/metrics", token=None)[1])
    assert wd.stop() == 0

    text = wd.log_path.read_text(errors="replace") if wd.log_path else ""
    assert '"event": "rollback_proposed"' in text  # the log covers the whole story
    for secret in (DB_PASSWORD, HOOK_TOKEN, HEADER_TOKEN, TOKEN, VIEWER_TOKEN):
        assert secret not in text, f"{secret[:6]}... in the log"
        assert secret not in str(answers), f"{secret[:6]}... in an API answer"


def send_partial(wd: Watchdogd, head: bytes, body: bytes) -> bytes:
    """Send the head and part of the body only, then read what the server answers."""
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as conn:
        conn.sendall(head + body)
        conn.settimeout(10)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 10:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_oversized_bodies_are_refused_before_they_are_read(watchdogd: Any) -> None:
    wd: Watchdogd = watchdogd(
        "services:\n  api:\n    rollback: {steps: [verify]}\n    rules: []\nsources: {}\n"
    )
    wd.start()
    declared = 512 << 20  # announced, never sent: only a server that stops reading can answer
    head = (
        "POST /v1/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    answer = send_partial(wd, head, b"x" * (2 << 20))
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
    assert status in (b"413", b"400"), answer[:300]

    chunked = (
        "POST /v1/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"x" * (256 << 10)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(8))  # 2 MiB, no last chunk
    answer = send_partial(wd, chunked, chunks)
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
    assert status in (b"413", b"400"), answer[:300]
    assert wd.get("/healthz", token=None)[0] == 200  # and it still serves
    assert wd.stop() == 0
