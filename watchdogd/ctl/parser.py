"""The ``ctl`` argument parser, and ``run``: the chosen subcommand, its errors turned into an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from watchdogd.config.types import parse_duration
from watchdogd.ctl import commands as handlers
from watchdogd.ctl.client import DEFAULT_URL, EXIT_USAGE, Client
from watchdogd.ctl.render import say
from watchdogd.errors import CtlError

BACKUP_WAIT = "1h"
"""How long ``ctl backup`` waits for its answer by default: past the default ``backups.timeout`` (30m)."""


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

    status = add("status", handlers.status, "deployments, their rules and rollback proposals")
    status.add_argument("--all", action="store_true", help="every deployment, not only open and recent ones")

    deploy = add("deploy", handlers.deploy, "register a deployment to watch")
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

    ack = add("ack", handlers.vote("ack", "acknowledged"), "acknowledge a proposal; it still proceeds")
    ack.add_argument("id", metavar="ID")
    veto = add("veto", handlers.vote("veto", "vetoed"), "cancel a pending proposal")
    veto.add_argument("id", metavar="ID")
    veto.add_argument("--reason", required=True)
    veto.add_argument("--mute-for", type=_duration, metavar="DURATION", help="mute the fired rules, e.g. 30m")
    approve = add("approve", handlers.vote("approve", "approved"), "execute a proposal now")
    approve.add_argument("id", metavar="ID")
    retry = add("retry", handlers.vote("retry", "retried"), "run a failed rollback again from its journal")
    retry.add_argument("id", metavar="ID")

    rollback = add("rollback", handlers.rollback, "propose rolling a deployment back")
    rollback.add_argument("deployment", metavar="DEPLOYMENT")
    rollback.add_argument("--reason", required=True)

    freeze = add("freeze", handlers.freeze, "refuse new deployments of a service for a while")
    freeze.add_argument("service", metavar="SERVICE")
    freeze.add_argument("--for", dest="for_", required=True, type=_duration, metavar="DURATION", help="2h")
    freeze.add_argument("--reason", required=True)
    unfreeze = add("unfreeze", handlers.unfreeze, "lift a service's deploy freeze")
    unfreeze.add_argument("service", metavar="SERVICE")

    backup = add("backup", handlers.backup, "back up a service's database now (pg_dump), before migrating")
    backup.add_argument("service", metavar="SERVICE")
    backup.add_argument("-q", "--quiet", action="store_true", help="print only the backup id")
    backup.add_argument(
        "--wait",
        type=_duration,
        default=BACKUP_WAIT,
        metavar="DURATION",
        help=f"how long to wait for the dump (default {BACKUP_WAIT}; the daemon stops it at backups.timeout)",
    )
    backups = add("backups", handlers.backups, "list a service's database backups, newest first")
    backups.add_argument("service", metavar="SERVICE")

    promote = add("promote", handlers.promote, "end a deployment's window now, as healthy")
    promote.add_argument("deployment", metavar="DEPLOYMENT")

    rehearse = add(
        "rehearse", handlers.rehearse, "run a deployment's down SQL in a transaction and roll it back"
    )
    rehearse.add_argument("deployment", metavar="DEPLOYMENT")

    events = add("events", handlers.events, "follow the event stream (reconnects where it left off)")
    events.add_argument("--last-event-id", metavar="ID", help="resume after this event")
    events.add_argument("--count", type=int, metavar="N", help="stop after N events")

    audit = add("audit", handlers.audit, "who did what when")
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
