"""``watchdogd ctl``: the HTTP API from a terminal or a pipeline.

Talks to ``--url`` or ``WATCHDOGD_URL`` (default ``http://127.0.0.1:9464``)
with ``--token`` or ``WATCHDOGD_TOKEN``; a flag wins over the variable. Exit
codes: 0 done, 1 the API refused (its message is printed in one line), 2 a
usage error or no daemon to talk to. ``--json`` prints the API's answers as
they are, for scripts.

Two things a server (or whoever can make it answer) never gets to do:

- act on the operator's terminal: every line printed for a person goes
  through ``printable``, which escapes control characters (C0, DEL, C1),
  Unicode format characters (bidi overrides, zero-width ones) and line
  separators found in the API's strings; ``--json`` is ASCII with every such
  character escaped by the JSON encoder;
- receive the token elsewhere: redirects are not followed at all (the daemon
  never sends one), and a 3xx answer ends the command naming where it pointed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any, TextIO

from watchdogd.config.types import format_duration, parse_duration
from watchdogd.errors import CtlError

DEFAULT_URL = "http://127.0.0.1:9464"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0
BACKUP_WAIT = "1h"
"""How long ``ctl backup`` waits for its answer by default: past the default ``backups.timeout`` (30m)."""
"""Silence on the event stream this long (four missed heartbeats) means the connection is dead."""
RECENT = 5
"""Finished deployments ``status`` shows besides the open ones."""
OPEN_ROLLBACKS = ("pending", "awaiting_approval", "executing")


class Refused(CtlError):
    """The API answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}", EXIT_REFUSED)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(CtlError):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot reach watchdogd at {url}: {why}", EXIT_USAGE)
        self.timed_out = why == "timed out"


class Usage(CtlError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class Redirected(CtlError):
    """The API answered 3xx: not followed, so the token goes nowhere but ``--url``."""

    def __init__(self, url: str, status: int, location: str | None) -> None:
        where = f"a redirect to {location[:200]}" if location else "a redirect with no Location"
        super().__init__(
            f"{url} answered {status}, {where}; watchdogd ctl follows no redirect (the token would go"
            " along): set --url or WATCHDOGD_URL to the address watchdogd answers on",
            EXIT_USAGE,
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # returning None leaves the 3xx to the default handler, which raises it as an HTTPError
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Client:
    """A bearer-token JSON client of one daemon's API."""

    url: str
    token: str | None = field(default=None, repr=False)
    token_from: str = "WATCHDOGD_TOKEN"
    """Where the token came from, for the answer to a 401: ``--token`` or ``WATCHDOGD_TOKEN``."""

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> Client:
        """The flags' ``url`` and ``token`` first, then the environment, then the default URL."""
        url_from = "--url" if url else "WATCHDOGD_URL"
        base = (url or os.environ.get("WATCHDOGD_URL") or DEFAULT_URL).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise Usage(f"{url_from} must start with http:// or https:// (got {base!r})")
        if token is not None:
            return cls(base, token.strip() or None, "--token")
        return cls(base, os.environ.get("WATCHDOGD_TOKEN", "").strip() or None)

    def get(self, path: str, **query: str | None) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        return self.call("GET", path + ("?" + urllib.parse.urlencode(params) if params else ""))

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = TIMEOUT) -> Any:
        return self.call("POST", path, body or {}, timeout)

    def call(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT) -> Any:
        """One request; ``timeout`` is how long the answer may keep silent."""
        data = json.dumps(body).encode() if body is not None else None
        request = self._request(method, path, data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            raise Unreachable(self.url, _why(exc)) from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise CtlError(f"{self.url}{path} did not answer JSON", EXIT_USAGE) from None

    def stream(self, path: str, last_id: str | None) -> Iterator[dict[str, Any]]:
        """Server-sent events from ``path``: dicts with ``id``, ``event`` and ``data``."""
        request = self._request("GET", path)
        request.add_header("Accept", "text/event-stream")
        if last_id is not None:
            request.add_header("Last-Event-ID", last_id)
        try:
            response = _OPENER.open(request, timeout=STREAM_TIMEOUT)
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            raise Unreachable(self.url, _why(exc)) from None
        with response:
            yield from parse_sse(response)

    def _request(self, method: str, path: str, data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        return request

    def _refused(self, exc: urllib.error.HTTPError) -> CtlError:
        if 300 <= exc.code < 400:
            return Redirected(self.url, exc.code, exc.headers.get("Location"))
        refused = _refused(exc)
        if refused.status != 401:
            return refused
        # say where the token is set, or where this one was read from
        hint = f"check {self.token_from}" if self.token else "pass --token or set WATCHDOGD_TOKEN"
        return Refused(refused.status, refused.code, f"{refused.message}; {hint}")


def parse_sse(lines: Any) -> Iterator[dict[str, Any]]:
    """Events from an iterable of raw SSE lines (bytes); comments and ``retry:`` are skipped."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            continue
        if "data" in fields:
            try:
                data = json.loads(fields["data"])
            except ValueError:
                data = fields["data"]
            yield {"id": fields.get("id"), "event": fields.get("event", "message"), "data": data}
        fields = {}


def _refused(exc: urllib.error.HTTPError) -> Refused:
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return Refused(exc.code, str(error["code"]), " ".join(str(error["message"]).split()))
    except (ValueError, KeyError, TypeError):
        text = " ".join(raw.decode("utf-8", "replace").split())[:200]
        return Refused(exc.code, str(exc.reason).lower().replace(" ", "_"), text or "no details")


def _why(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is `watchdogd run` up?)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason) or type(reason).__name__


# --- output -------------------------------------------------------------------------------------

_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories a terminal acts on or hides instead of showing: controls (C0 with tab and
newline, DEL, C1), format characters (bidi overrides and isolates, zero-width ones), lone
surrogates, line and paragraph separators."""


def printable(text: str) -> str:
    """``text`` safe for a terminal: each character of an ``_UNSAFE`` category shown as an escape.

    ``"\\x1b[2J"`` instead of a cleared screen, ``"\\u202e"`` instead of reversed text. Every
    line ``ctl`` prints for a person goes through here; what it leaves is one line of visible text.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def say(line: str, out: TextIO, *, flush: bool = False) -> None:
    """Print one line for a person; see ``printable``."""
    print(printable(line), file=out, flush=flush)


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def left(until: str | None, now: float) -> str:
    """Time from ``now`` to ``until`` (whole seconds), or ``-``."""
    end = parse_time(until)
    if end is None:
        return "-"
    return format_duration(max(0, round(end - now)))


def ago(since: str | None, now: float) -> str:
    start = parse_time(since)
    if start is None:
        return ""
    return format_duration(max(0, round(now - start))) + " ago"


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: list[list[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart; the first row is the header. Cells are made printable."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def reasons_text(reasons: list[dict[str, Any]]) -> str:
    parts = []
    for reason in reasons:
        if "rule" in reason:
            parts.append(f"{reason['rule']} = {value_text(reason.get('value'))}")
        else:
            parts.append(f"{reason.get('operator', 'operator')}: {reason.get('reason', '')}")
    return "; ".join(parts) or "-"


def veto_left(rollback: dict[str, Any], now: float) -> str:
    state = rollback["state"]
    if state == "pending":
        return left(rollback["execute_at"], now)
    if state == "awaiting_approval":
        deadline = rollback.get("execute_at")
        return "needs approval" + (f" ({left(deadline, now)} left)" if deadline else "")
    return "-"


def status_lines(deployments: list[dict[str, Any]], rollbacks: list[dict[str, Any]], now: float) -> list[str]:
    if not deployments:
        return ["no deployments"]
    lines = table(
        [["DEPLOYMENT", "SERVICE", "STATE", "WINDOW LEFT", "IMAGE"]]
        + [
            [
                d["id"],
                d["service"],
                d["state"],
                left(d["window_ends_at"], now) if d["state"] == "watching" else "-",
                d.get("image") or "-",
            ]
            for d in deployments
        ]
    )
    out = [lines[0]]
    for line, deployment in zip(lines[1:], deployments, strict=True):
        out.append(line)
        rules = deployment.get("rules") or []
        if deployment["state"] == "watching" and rules:
            rows = [[r["name"], r["state"], value_text(r["value"]), ago(r["since"], now)] for r in rules]
            head = ["RULE", "STATE", "VALUE", "SINCE"]
            if any(r["state"] == "no_data" for r in rules):
                # a rule that cannot see says why: a refused query, a source down, warming up
                head.append("WHY NO DATA")
                for row, rule in zip(rows, rules, strict=True):
                    row.append(rule.get("reason") or "" if rule["state"] == "no_data" else "")
            out.extend(table([head, *rows], indent="    "))
    shown = {d["id"] for d in deployments}
    proposals = [r for r in rollbacks if r["deployment_id"] in shown]
    out.append("")
    if not proposals:
        out.append("no rollback proposals")
        return out
    out.extend(
        table(
            [["ROLLBACK", "DEPLOYMENT", "STATE", "VETO LEFT", "WHY"]]
            + [
                [r["id"], r["deployment_id"], r["state"], veto_left(r, now), reasons_text(r["reasons"])]
                for r in proposals
            ]
        )
    )
    return out


def rollback_line(verb: str, rollback: dict[str, Any], now: float) -> str:
    state = rollback["state"]
    line = f"rollback {rollback['id']} of {rollback['deployment_id']} {verb}: {state}"
    if state == "pending":
        line += f", executes in {left(rollback['execute_at'], now)} unless vetoed"
    elif state == "awaiting_approval":
        line += ", waits for `watchdogd ctl approve " + rollback["id"] + "`"
    elif state == "failed" and rollback.get("error"):
        line += f" ({rollback['error']})"
    return line


def event_line(event: dict[str, Any]) -> str:
    """One readable line per event."""
    kind, data = event["event"], event["data"]
    if not isinstance(data, dict):
        return f"{kind} {data}"
    at = data.get("at")
    stamp = rfc3339(at) if isinstance(at, int | float) else ""
    where = " ".join(
        f"{key}={data[key]}" for key in ("service", "deployment_id", "rollback_id", "actor") if data.get(key)
    )
    if kind == "rule_state":
        what = (
            f"{data.get('rule')} {data.get('from')} -> {data.get('to')} value={value_text(data.get('value'))}"
        )
        if data.get("reason"):
            what += f" ({data['reason']})"
    elif kind == "reset":
        what = "events were missed; run `watchdogd ctl status` for the current state"
        where = ""
    else:
        what = " ".join(f"{k}={v}" for k, v in data.items() if k in ("state",)) or ""
    return " ".join(part for part in (stamp, kind, what, where) if part)


# --- commands ------------------------------------------------------------------------------------


def _status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    deployments = client.get("/v1/deployments")["items"]
    rollbacks = client.get("/v1/rollbacks")["items"]
    if not args.all:
        open_ones = [d for d in deployments if d["state"] in ("watching", "rolling_back")]
        finished = [d for d in deployments if d not in open_ones][:RECENT]
        deployments = [d for d in deployments if d in open_ones or d in finished]
    try:
        freezes = client.get("/v1/freezes")["items"]
    except Refused as exc:
        if exc.status != 404:  # a daemon older than freezes has none to show
            raise
        freezes = []
    if args.json:
        shown = {d["id"] for d in deployments}
        items = [r for r in rollbacks if r["deployment_id"] in shown]
        _dump({"deployments": deployments, "rollbacks": items, "freezes": freezes}, out)
        return EXIT_OK
    now = time.time()
    for line in [*freeze_lines(freezes, now), *status_lines(deployments, rollbacks, now)]:
        say(line, out)
    return EXIT_OK


def freeze_lines(freezes: list[dict[str, Any]], now: float) -> list[str]:
    """One line per freeze in force: no deployment of the service is taken until it ends or is lifted."""
    return [
        printable(
            f"FROZEN {f['service']}: no deployments for {left(f['until'], now)} (until {f['until']},"
            f" by {f['by']}): {f['reason']}"
        )
        for f in freezes
    ]


def _freeze(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    freeze = client.post(
        f"/v1/services/{_quote(args.service)}/freeze", {"reason": args.reason, "for": args.for_}
    )
    if args.json:
        _dump(freeze, out)
    else:
        say(freeze_lines([freeze], time.time())[0], out)
    return EXIT_OK


def _unfreeze(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("DELETE", f"/v1/services/{_quote(args.service)}/freeze")
    if args.json:
        _dump(answer, out)
    else:
        say(printable(f"unfrozen {args.service} (was: {answer['lifted']['reason']})"), out)
    return EXIT_OK


def size_text(size: Any) -> str:
    """Bytes for a person: ``12.3 MiB (12897484 bytes)``."""
    if not isinstance(size, int) or isinstance(size, bool):
        return value_text(size)
    if size < 1024:
        return f"{size} bytes"
    value, units = size / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]} ({size} bytes)"


def backup_lines(backup: dict[str, Any]) -> list[str]:
    """What a pipeline log should keep of a backup: its id, size, checksum and every table's rows."""
    lines = [
        f"backup {backup['backup_id']} of {backup['service']} (database {backup['database']}):"
        f" {size_text(backup['size'])} in {value_text(backup.get('seconds'))}s",
        f"  sha256 {backup['sha256']}",
        f"  taken {backup['created_at']} by {backup.get('by') or '-'},"
        f" PostgreSQL {backup.get('server_version') or '-'}",
    ]
    tables = backup.get("tables") or {}
    if not tables:
        return [*lines, "  no tables"]
    rows = [["TABLE", "ROWS AT BACKUP"], *([name, value_text(n)] for name, n in sorted(tables.items()))]
    return [*lines, *table(rows, indent="  ")]


def _backup(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    # the daemon answers once the dump is done, which may take up to its backups.timeout
    try:
        backup = client.post(
            f"/v1/services/{_quote(args.service)}/backups", timeout=parse_duration(args.wait)
        )
    except Unreachable as exc:
        if not exc.timed_out:
            raise
        raise CtlError(
            f"no answer from {client.url} within {args.wait}: the backup may still be running; see"
            f" `watchdogd ctl backups {args.service}` before migrating",
            EXIT_USAGE,
        ) from None
    if args.json:
        _dump(backup, out)
    elif args.quiet:
        say(backup["backup_id"], out)
    else:
        for line in backup_lines(backup):
            say(line, out)
        say(f"register the deploy with --backup-id {backup['backup_id']} so a restore step can use it", out)
    return EXIT_OK


def _backups(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.get(f"/v1/services/{_quote(args.service)}/backups")
    if args.json:
        _dump(answer, out)
        return EXIT_OK
    items = answer["items"]
    if not items:
        say(f"no backups of {args.service}", out)
        return EXIT_OK
    rows = [["BACKUP", "CREATED", "SIZE", "TABLES", "ROWS", "BY"]]
    for b in items:
        tables = b.get("tables") or {}
        total = sum(n for n in tables.values() if isinstance(n, int))
        rows.append(
            [
                b["backup_id"],
                b["created_at"],
                size_text(b["size"]),
                str(len(tables)),
                str(total),
                b.get("by") or "-",
            ]
        )
    for line in table(rows):
        say(line, out)
    return EXIT_OK


def _deploy(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"service": args.service, "rehearse": args.rehearse}
    for key in ("image", "previous_image", "window", "backup_id"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.migration_id is None and (args.down_sql_file is not None or args.verify_sql):
        raise Usage("--down-sql-file and --verify-sql need --migration-id")
    if args.migration_id is not None:
        # by id alone the daemon reads the SQL from the service's migrations directory
        migration: dict[str, Any] = {"id": args.migration_id}
        if args.down_sql_file is not None:
            migration["down_sql"] = _read(args.down_sql_file)
        if args.verify_sql:
            migration["verify_sql"] = args.verify_sql
        body["migrations"] = [migration]
    deployment = client.post("/v1/deployments", body)
    if args.json:
        _dump(deployment, out)
        return EXIT_OK
    now = time.time()
    say(
        f"deployment {deployment['id']} of {deployment['service']} ({deployment.get('image') or '-'}):"
        f" {deployment['state']}, window ends in {left(deployment['window_ends_at'], now)}",
        out,
    )
    if deployment.get("sql_policy"):
        destroys = deployment.get("destroys") or []
        say(f"  down SQL policy: {deployment['sql_policy']}", out)
        for finding in destroys:
            say(f"    {finding}", out)
    rehearsal = deployment.get("rehearsal")
    if rehearsal:
        say(f"  rehearsal: {rehearsal['status']}: {rehearsal['detail']}", out)
    return EXIT_OK


def _vote(verb: str, done: str) -> Callable[[Client, argparse.Namespace, TextIO], int]:
    def command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        body: dict[str, Any] = {}
        if verb == "veto":
            body["reason"] = args.reason
            if args.mute_for is not None:
                body["mute_for"] = args.mute_for
        rollback = client.post(f"/v1/rollbacks/{_quote(args.id)}/{verb}", body)
        if args.json:
            _dump(rollback, out)
            return EXIT_OK
        line = rollback_line(done, rollback, time.time())
        if verb == "veto":
            line += (
                f"; its rules are muted for {args.mute_for}"
                if args.mute_for
                else "; its rules are muted until they clear"
            )
        say(line, out)
        return EXIT_OK

    return command


def _rollback(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    rollback = client.post(f"/v1/deployments/{_quote(args.deployment)}/rollback", {"reason": args.reason})
    if args.json:
        _dump(rollback, out)
    else:
        say(rollback_line("proposed", rollback, time.time()), out)
    return EXIT_OK


def _promote(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    deployment = client.post(f"/v1/deployments/{_quote(args.deployment)}/promote")
    if args.json:
        _dump(deployment, out)
    else:
        say(f"deployment {deployment['id']} of {deployment['service']}: {deployment['state']}", out)
    return EXIT_OK


def _rehearse(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    report = client.post(f"/v1/deployments/{_quote(args.deployment)}/rehearse")
    if args.json:
        _dump(report, out)
    else:
        say(f"rehearsal of {args.deployment}: {report['status']}: {report['detail']}", out)
    return EXIT_REFUSED if report["status"] == "failed" else EXIT_OK


def _events(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    last_id: str | None = args.last_event_id
    seen = 0
    pause = 1.0
    connected = False
    while True:
        try:
            for event in client.stream("/v1/events", last_id):
                connected, pause = True, 1.0
                if event["id"] is not None:
                    last_id = event["id"]
                if args.json:
                    print(_json(event), file=out, flush=True)
                else:
                    say(event_line(event), out, flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return EXIT_OK
            why = "the daemon ended the stream"
        except Unreachable as exc:
            if not connected:
                raise  # never reached it: a wrong URL, or no daemon
            why = str(exc)
        except (OSError, HTTPException) as exc:
            why = f"connection lost: {_why(exc)}"
        say(f"watchdogd ctl: {why}; reconnecting in {pause:g}s", sys.stderr, flush=True)
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def _audit(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    since = None
    if args.since:
        since = _since(args.since)
    answer = client.get("/v1/audit", deployment=args.deployment, actor=args.actor, since=since)
    if args.json:
        _dump(answer, out)
        return EXIT_OK
    items = answer["items"]
    if not items:
        say("no audit entries", out)
        return EXIT_OK
    rows = [["AT", "ACTOR", "ACTION", "DEPLOYMENT", "ROLLBACK", "DETAIL"]]
    for e in items:
        detail = json.dumps(e.get("detail") or {}, separators=(",", ":"), default=str)
        rows.append(
            [
                e["at"] or "-",
                e["actor"],
                e["action"],
                e.get("deployment_id") or "-",
                e.get("rollback_id") or "-",
                detail if len(detail) <= 80 else detail[:77] + "...",
            ]
        )
    for line in table(rows):
        say(line, out)
    return EXIT_OK


def _since(text: str) -> str:
    """``--since``: an RFC 3339 time, or a duration back from now (``30m``)."""
    try:
        return rfc3339(time.time() - parse_duration(text))
    except ValueError:
        pass
    try:
        parse_time(text)
    except ValueError:
        raise Usage(f"--since: write an RFC 3339 time or a duration such as 30m (got {text!r})") from None
    return text


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise Usage(f"--down-sql-file: cannot read {path}: {exc.strerror}") from None


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _dump(data: Any, out: TextIO) -> None:
    print(_json(data, indent=2), file=out)


def _json(data: Any, indent: int | None = None) -> str:
    # ASCII only: every control, C1 and format character in the API's strings leaves as a \u escape
    return json.dumps(data, indent=indent, ensure_ascii=True)


# --- parsing ------------------------------------------------------------------------------------


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Adds ``ctl`` and its subcommands to the ``watchdogd`` subparsers."""
    ctl = commands.add_parser(
        "ctl",
        help="talk to a running watchdogd (--url, --token or WATCHDOGD_URL, WATCHDOGD_TOKEN)",
        description="Client of the watchdogd API. Exit 0 ok, 1 refused by the API, 2 usage or connection.",
    )
    ctl.add_argument("--url", help=f"the API (default: $WATCHDOGD_URL or {DEFAULT_URL})")
    ctl.add_argument("--token", help="bearer token (default: $WATCHDOGD_TOKEN)")
    ctl.add_argument("--json", action="store_true", help="print the API's JSON")
    # The same flags after the subcommand; SUPPRESS keeps them from undoing the ones before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON")
    sub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[Client, argparse.Namespace, TextIO], int], text: str
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text, description=text, parents=[common])
        parser.set_defaults(ctl_handler=handler)
        return parser

    status = add("status", _status, "deployments, their rules and rollback proposals")
    status.add_argument("--all", action="store_true", help="every deployment, not only open and recent ones")

    deploy = add("deploy", _deploy, "register a deployment to watch")
    deploy.add_argument("--service", required=True)
    deploy.add_argument("--image")
    deploy.add_argument("--previous-image")
    deploy.add_argument(
        "--migration-id", metavar="ID", help="read from the service's database.migrations directory"
    )
    deploy.add_argument(
        "--down-sql-file",
        metavar="FILE",
        help="send the migration's down SQL (- for stdin); needs database.sql_from_api",
    )
    deploy.add_argument(
        "--verify-sql", action="append", default=[], metavar="QUERY", help="repeat for several"
    )
    deploy.add_argument("--window", type=_duration, metavar="DURATION", help="e.g. 2h")
    deploy.add_argument(
        "--backup-id", metavar="ID", help="the backup taken before migrating (watchdogd ctl backup)"
    )
    deploy.add_argument(
        "--rehearse", action="store_true", help="rehearse the down SQL now (rolled back); needs operator"
    )

    ack = add("ack", _vote("ack", "acknowledged"), "acknowledge a proposal; it still proceeds")
    ack.add_argument("id", metavar="ID")
    veto = add("veto", _vote("veto", "vetoed"), "cancel a pending proposal")
    veto.add_argument("id", metavar="ID")
    veto.add_argument("--reason", required=True)
    veto.add_argument("--mute-for", type=_duration, metavar="DURATION", help="mute the fired rules, e.g. 30m")
    approve = add("approve", _vote("approve", "approved"), "execute a proposal now")
    approve.add_argument("id", metavar="ID")
    retry = add("retry", _vote("retry", "retried"), "run a failed rollback again from its journal")
    retry.add_argument("id", metavar="ID")

    rollback = add("rollback", _rollback, "propose rolling a deployment back")
    rollback.add_argument("deployment", metavar="DEPLOYMENT")
    rollback.add_argument("--reason", required=True)

    freeze = add("freeze", _freeze, "refuse new deployments of a service for a while")
    freeze.add_argument("service", metavar="SERVICE")
    freeze.add_argument("--for", dest="for_", required=True, type=_duration, metavar="DURATION", help="2h")
    freeze.add_argument("--reason", required=True)
    unfreeze = add("unfreeze", _unfreeze, "lift a service's deploy freeze")
    unfreeze.add_argument("service", metavar="SERVICE")

    backup = add("backup", _backup, "back up a service's database now (pg_dump), before migrating")
    backup.add_argument("service", metavar="SERVICE")
    backup.add_argument("-q", "--quiet", action="store_true", help="print only the backup id")
    backup.add_argument(
        "--wait",
        type=_duration,
        default=BACKUP_WAIT,
        metavar="DURATION",
        help=f"how long to wait for the dump (default {BACKUP_WAIT}; the daemon stops it at backups.timeout)",
    )
    backups = add("backups", _backups, "list a service's database backups, newest first")
    backups.add_argument("service", metavar="SERVICE")

    promote = add("promote", _promote, "end a deployment's window now, as healthy")
    promote.add_argument("deployment", metavar="DEPLOYMENT")

    rehearse = add("rehearse", _rehearse, "run a deployment's down SQL in a transaction and roll it back")
    rehearse.add_argument("deployment", metavar="DEPLOYMENT")

    events = add("events", _events, "follow the event stream (reconnects where it left off)")
    events.add_argument("--last-event-id", metavar="ID", help="resume after this event")
    events.add_argument("--count", type=int, metavar="N", help="stop after N events")

    audit = add("audit", _audit, "who did what when")
    audit.add_argument("--deployment", metavar="ID")
    audit.add_argument("--actor", metavar="NAME")
    audit.add_argument("--since", metavar="T", help="RFC 3339 time, or a duration back from now (1h)")

    ctl.set_defaults(handler=run)
    return ctl


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Runs the parsed ``ctl`` command; errors become one line on stderr and an exit code."""
    stream = out or sys.stdout
    try:
        client = Client.from_env(args.url, args.token)
        code: int = args.ctl_handler(client, args, stream)
        return code
    except CtlError as exc:
        say(f"watchdogd ctl: {exc}", sys.stderr)
        return exc.exit_code
    except (KeyError, TypeError) as exc:
        # a daemon of another version answering in another shape
        say(f"watchdogd ctl: unexpected answer from the API (missing {exc})", sys.stderr)
        return EXIT_USAGE
