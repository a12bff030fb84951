"""The ``ctl`` subcommands: each calls the API with a ``Client`` and prints the answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from http.client import HTTPException
from typing import Any, TextIO

from watchdogd.config.types import parse_duration
from watchdogd.ctl.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Client,
    Refused,
    Unreachable,
    Usage,
    why_unreachable,
)
from watchdogd.ctl.render import (
    backup_lines,
    dump,
    event_line,
    freeze_lines,
    json_text,
    left,
    parse_time,
    printable,
    rfc3339,
    rollback_line,
    say,
    size_text,
    status_lines,
    table,
)
from watchdogd.errors import CtlError

RECENT = 5
"""Finished deployments ``status`` shows besides the open ones."""


def status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
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
        dump({"deployments": deployments, "rollbacks": items, "freezes": freezes}, out)
        return EXIT_OK
    now = time.time()
    for line in [*freeze_lines(freezes, now), *status_lines(deployments, rollbacks, now)]:
        say(line, out)
    return EXIT_OK


def freeze(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    freeze = client.post(
        f"/v1/services/{_quote(args.service)}/freeze", {"reason": args.reason, "for": args.for_}
    )
    if args.json:
        dump(freeze, out)
    else:
        say(freeze_lines([freeze], time.time())[0], out)
    return EXIT_OK


def unfreeze(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("DELETE", f"/v1/services/{_quote(args.service)}/freeze")
    if args.json:
        dump(answer, out)
    else:
        say(printable(f"unfrozen {args.service} (was: {answer['lifted']['reason']})"), out)
    return EXIT_OK


def backup(client: Client, args: argparse.Namespace, out: TextIO) -> int:
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
        dump(backup, out)
    elif args.quiet:
        say(backup["backup_id"], out)
    else:
        for line in backup_lines(backup):
            say(line, out)
        say(f"register the deploy with --backup-id {backup['backup_id']} so a restore step can use it", out)
    return EXIT_OK


def backups(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.get(f"/v1/services/{_quote(args.service)}/backups")
    if args.json:
        dump(answer, out)
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


def deploy(client: Client, args: argparse.Namespace, out: TextIO) -> int:
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
        dump(deployment, out)
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


def vote(verb: str, done: str) -> Callable[[Client, argparse.Namespace, TextIO], int]:
    def command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        body: dict[str, Any] = {}
        if verb == "veto":
            body["reason"] = args.reason
            if args.mute_for is not None:
                body["mute_for"] = args.mute_for
        rollback = client.post(f"/v1/rollbacks/{_quote(args.id)}/{verb}", body)
        if args.json:
            dump(rollback, out)
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


def rollback(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    rollback = client.post(f"/v1/deployments/{_quote(args.deployment)}/rollback", {"reason": args.reason})
    _answer(args, out, rollback, lambda r: rollback_line("proposed", r, time.time()))
    return EXIT_OK


def promote(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    deployment = client.post(f"/v1/deployments/{_quote(args.deployment)}/promote")
    _answer(args, out, deployment, lambda d: f"deployment {d['id']} of {d['service']}: {d['state']}")
    return EXIT_OK


def rehearse(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    report = client.post(f"/v1/deployments/{_quote(args.deployment)}/rehearse")
    _answer(args, out, report, lambda r: f"rehearsal of {args.deployment}: {r['status']}: {r['detail']}")
    return EXIT_REFUSED if report["status"] == "failed" else EXIT_OK


def _answer(args: argparse.Namespace, out: TextIO, body: Any, line: Callable[[Any], str]) -> None:
    """The daemon's answer as JSON with ``--json``, else as ``line`` says it."""
    if args.json:
        dump(body, out)
    else:
        say(line(body), out)


def events(client: Client, args: argparse.Namespace, out: TextIO) -> int:
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
                    print(json_text(event), file=out, flush=True)
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
            why = f"connection lost: {why_unreachable(exc)}"
        say(f"watchdogd ctl: {why}; reconnecting in {pause:g}s", sys.stderr, flush=True)
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def audit(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    since = None
    if args.since:
        since = _since(args.since)
    answer = client.get("/v1/audit", deployment=args.deployment, actor=args.actor, since=since)
    if args.json:
        dump(answer, out)
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
