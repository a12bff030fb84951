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

Modules: ``client`` (the API client and the errors that end a command),
``render`` (what is printed), ``commands`` (one function per subcommand) and
``parser`` (the argument parser and ``run``).
"""

from watchdogd.ctl.client import (
    DEFAULT_URL,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    STREAM_TIMEOUT,
    TIMEOUT,
    Client,
    Redirected,
    Refused,
    Unreachable,
    Usage,
    parse_sse,
)
from watchdogd.ctl.commands import RECENT
from watchdogd.ctl.parser import BACKUP_WAIT, add_parser, run
from watchdogd.ctl.render import (
    ago,
    backup_lines,
    event_line,
    freeze_lines,
    left,
    parse_time,
    printable,
    reasons_text,
    rfc3339,
    rollback_line,
    say,
    size_text,
    status_lines,
    table,
    value_text,
    veto_left,
)

__all__ = [
    "BACKUP_WAIT",
    "DEFAULT_URL",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "RECENT",
    "STREAM_TIMEOUT",
    "TIMEOUT",
    "Client",
    "Redirected",
    "Refused",
    "Unreachable",
    "Usage",
    "add_parser",
    "ago",
    "backup_lines",
    "event_line",
    "freeze_lines",
    "left",
    "parse_sse",
    "parse_time",
    "printable",
    "reasons_text",
    "rfc3339",
    "rollback_line",
    "run",
    "say",
    "size_text",
    "status_lines",
    "table",
    "value_text",
    "veto_left",
]
