"""``watchdogd ctl`` against local HTTP servers that answer what a hostile or confused server might."""

from __future__ import annotations

import io
import json
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from watchdogd.cli import build_parser
from watchdogd.config.models import BackupsConfig
from watchdogd.config.types import parse_duration

pytestmark = pytest.mark.integration

TOKEN = "s3cret-operator-token"
# what a deployer or a rule reason can put into a string: colours, a screen clear, an OSC 8
# hyperlink, a bell, overwrite tricks, bidi overrides, a line separator, C1 CSI, DEL
NASTY = (
    "\x1b[31mred\x1b[0m\x1b[2J \x1b]8;;https://evil.example/\x07click\x1b]8;;\x07 \x07 safe\rEVIL\x08"
    " \u202eexe.txt\u202c \u2066x\u2069 a\u2028b \x9b31m \x7f zero\u200bwidth \ufeff"
)


def unsafe(text: str) -> list[str]:
    """The characters of ``text`` a terminal would act on instead of showing (newlines aside)."""
    return [
        repr(ch) for ch in text if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]


def strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from strings(value)


@dataclass
class Seen:
    path: str
    authorization: str | None


@dataclass
class Server:
    """A threaded local HTTP server answering every request with ``answer(method, path)``."""

    answer: Callable[[str, str], tuple[int, dict[str, str], bytes]]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append(Seen(self.path, self.headers.get("Authorization")))
                status, headers, body = outer.answer(self.command, self.path)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[str, str], tuple[int, dict[str, str], bytes]]], Server]]:
    started: list[Server] = []

    def start(answer: Callable[[str, str], tuple[int, dict[str, str], bytes]]) -> Server:
        server = Server(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def ctl(url: str, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["ctl", "--url", url, "--token", TOKEN, *argv])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err):
        code = args.handler(args, out)
    return code, out.getvalue(), err.getvalue()


def json_answer(data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


DEPLOYMENT = {
    "id": "d1" + NASTY,
    "service": "api" + NASTY,
    "image": "registry/app:v2" + NASTY,
    "previous_image": "registry/app:v1",
    "state": "watching",
    "started_at": "2026-01-05T02:00:00Z",
    "window_ends_at": "2099-01-05T04:00:00Z",
    "rules": [
        {"name": "error-rate" + NASTY, "state": "no_data", "value": None, "since": None, "reason": NASTY},
        {"name": "p99", "state": "firing" + NASTY, "value": NASTY, "since": "2026-01-05T02:00:00Z"},
    ],
}
ROLLBACK = {
    "id": "r1" + NASTY,
    "deployment_id": DEPLOYMENT["id"],
    "state": "failed",
    "error": "step container: " + NASTY,
    "reasons": [{"rule": "error-rate" + NASTY, "value": 0.2}, {"operator": "alice" + NASTY, "reason": NASTY}],
    "proposed_at": "2026-01-05T02:05:00Z",
    "execute_at": "2026-01-05T02:06:00Z",
}
AUDIT = {"at": "2026-01-05T02:05:00Z", "actor": "ci" + NASTY, "action": "deploy" + NASTY,
         "deployment_id": DEPLOYMENT["id"], "rollback_id": None, "detail": {"image": NASTY}}  # fmt: skip
EVENT = {"at": 1_767_578_400, "service": "api" + NASTY, "deployment_id": "d1", "rule": "r" + NASTY,
         "from": "ok", "to": "firing" + NASTY, "value": 1.0, "reason": NASTY}  # fmt: skip


FREEZE = {"service": "api" + NASTY, "reason": NASTY, "since": "2026-01-05T02:05:00Z",
          "until": "2026-01-05T04:05:00Z", "by": "alice" + NASTY, "rollback_id": None}  # fmt: skip
BACKUP = {"backup_id": "api-1" + NASTY, "service": "api" + NASTY, "database": "app" + NASTY,
          "created_at": "2026-01-05T02:00:00Z" + NASTY, "size": 4096, "sha256": "ab" + NASTY,
          "tables": {"public.orders" + NASTY: 3}, "server_version": NASTY, "by": "ci" + NASTY,
          "seconds": 0.5}  # fmt: skip


def hostile(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    if path.endswith("/backups"):
        return json_answer(BACKUP, 201) if method == "POST" else json_answer({"items": [BACKUP]})
    if path.startswith("/v1/events"):
        body = f"id: 1\nevent: rule_state\ndata: {json.dumps(EVENT)}\n\n".encode()
        body += f"id: 2\nevent: proposal{NASTY}\ndata: {json.dumps({'state': NASTY})}\n\n".encode()
        return 200, {"Content-Type": "text/event-stream"}, body
    if path.startswith("/v1/audit"):
        return json_answer({"items": [AUDIT]})
    if path == "/v1/deployments" and method == "GET":
        return json_answer({"items": [DEPLOYMENT]})
    if path == "/v1/deployments":
        return json_answer({**DEPLOYMENT, "sql_policy": NASTY, "destroys": [NASTY],
                            "rehearsal": {"status": NASTY, "detail": NASTY}}, 201)  # fmt: skip
    if path == "/v1/rollbacks":
        return json_answer({"items": [ROLLBACK]})
    if path == "/v1/freezes":
        return json_answer({"items": [FREEZE]})
    if path.endswith("/freeze"):
        return json_answer(
            FREEZE if method == "POST" else {"lifted": FREEZE}, 201 if method == "POST" else 200
        )
    if path.endswith("/rehearse"):
        return json_answer({"status": "ok" + NASTY, "detail": NASTY})
    if path.endswith("/promote"):
        return json_answer(DEPLOYMENT)
    if path.endswith("/veto"):
        return json_answer({"error": {"code": "conflict" + NASTY, "message": NASTY}}, 409)
    return json_answer({**ROLLBACK, "state": "pending"})


COMMANDS = [
    ("status",),
    ("status", "--all"),
    ("deploy", "--service", "api", "--image", "app:v2"),
    ("ack", "r1"),
    ("approve", "r1"),
    ("retry", "r1"),
    ("veto", "r1", "--reason", "no"),
    ("rollback", "d1", "--reason", "bad"),
    ("promote", "d1"),
    ("rehearse", "d1"),
    ("events", "--count", "2"),
    ("audit",),
    ("freeze", "api", "--for", "2h", "--reason", "incident"),
    ("unfreeze", "api"),
    ("backup", "api"),
    ("backup", "api", "--quiet"),
    ("backups", "api"),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_no_server_string_reaches_the_terminal_raw(servers: Any, argv: tuple[str, ...]) -> None:
    server = servers(hostile)
    _, out, err = ctl(server.url, *argv)
    assert out or err
    assert unsafe(out) == []
    assert unsafe(err) == []
    # what was there is still visible, escaped
    assert "\\x1b[31mred" in out + err


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("audit",),
        ("events", "--count", "2"),
        ("promote", "d1"),
        ("backup", "api"),
        ("backups", "api"),
    ],
)
def test_json_output_escapes_every_control_character(servers: Any, argv: tuple[str, ...]) -> None:
    server = servers(hostile)
    code, out, _ = ctl(server.url, "--json", *argv)
    assert code == 0
    assert [ch for ch in out if ch not in "\n" and not (" " <= ch <= "~")] == []
    answers = [json.loads(line) for line in out.splitlines()] if argv[0] == "events" else [json.loads(out)]
    assert any(NASTY in text for text in strings(answers))  # nothing lost: the exact strings are there


def test_a_redirect_to_another_origin_gets_no_token(servers: Any) -> None:
    elsewhere = servers(lambda method, path: json_answer({"items": []}))
    redirecting = servers(lambda method, path: (307, {"Location": elsewhere.url + path}, b""))
    code, out, err = ctl(redirecting.url, "status")
    assert out == ""
    assert [s.authorization for s in elsewhere.seen] == []
    assert [s.authorization for s in redirecting.seen] == [f"Bearer {TOKEN}"]
    assert code == 2
    assert "redirect" in err and elsewhere.url in err
    assert TOKEN not in err


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_no_redirect_is_followed_by_any_command(servers: Any, status: int) -> None:
    elsewhere = servers(lambda method, path: json_answer({"items": []}))
    redirecting = servers(lambda method, path: (status, {"Location": elsewhere.url + path}, b""))
    for argv in (("status",), ("ack", "r1"), ("events", "--count", "1")):
        code, _, err = ctl(redirecting.url, *argv)
        assert code == 2, err
        assert f"answered {status}" in err
    assert elsewhere.seen == []


def test_ctl_backup_waits_for_a_slow_dump_and_says_when_it_gave_up(servers: Any) -> None:
    def slow(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.6)  # a dump taking longer than the client waits
        return json_answer({**BACKUP, "backup_id": "api-1"}, 201)

    server = servers(slow)
    code, out, err = ctl(server.url, "backup", "api", "--quiet", "--wait", "2s")
    assert (code, out, err) == (0, "api-1\n", "")
    code, out, err = ctl(server.url, "backup", "api", "--wait", "200ms")
    assert (code, out) == (2, "")
    assert "within 200ms: the backup may still be running; see `watchdogd ctl backups api`" in err
    # by default it waits past the daemon's own limit on a dump, not the 30s of other commands
    args = build_parser().parse_args(["ctl", "backup", "api"])
    assert parse_duration(args.wait) > BackupsConfig().timeout
