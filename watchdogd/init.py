"""``watchdogd init``: a starter config and a tokens file, ready for ``watchdogd run``.

The config passes ``watchdogd check`` as written and keeps its state in a
SQLite file beside it. The tokens file holds only each token's SHA-256: the
tokens themselves are returned once, for the command to print, and are not
kept anywhere.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchdogd.auth import RANKS, Role
from watchdogd.errors import WatchdogError

CONFIG_NAME = "watchdogd.yaml"
TOKENS_NAME = "tokens.yaml"
ROLES: tuple[Role, ...] = ("admin", "operator", "deployer")
"""One token for each, named after its role; a pipeline's is ``deployer``: it registers, never votes."""


class InitRefused(WatchdogError):
    """The files could not be written; nothing was left behind."""


@dataclass(frozen=True, slots=True)
class NewToken:
    name: str
    role: Role
    token: str = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Written:
    config: Path
    tokens_file: Path
    tokens: tuple[NewToken, ...]


def new_tokens(make: Callable[[int], str] = secrets.token_urlsafe) -> tuple[NewToken, ...]:
    return tuple(NewToken(role, role, make(32)) for role in ROLES)


def tokens_text(tokens: Sequence[NewToken]) -> str:
    ladder = " < ".join(sorted(RANKS, key=RANKS.__getitem__))
    lines = [
        "# Bearer tokens of watchdogd's API, written by `watchdogd init`.",
        "# Only each token's SHA-256 is kept here; the tokens were printed once, when it was written.",
        f"# Roles: {ladder}. To add a token, add its hash (a plain `token:` works too):",
        "#   python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())' TOKEN",
        "tokens:",
    ]
    for token in tokens:
        lines += [f"  - name: {token.name}", f"    role: {token.role}", f"    sha256: {token.sha256}"]
    return "\n".join(lines) + "\n"


CONFIG_TEXT = """\
# watchdogd config, written by `watchdogd init`.
#
#   watchdogd check --config watchdogd.yaml    prints it as understood, or each problem with its line
#   watchdogd run --config watchdogd.yaml      the daemon
#
# Every key is in docs/config.md, how rules decide in docs/rules.md. Relative
# paths are taken from this file's folder.

server:
  listen: 127.0.0.1:9464            # the API and /metrics; other hosts cannot reach 127.0.0.1
  tokens_file: tokens.yaml          # bearer tokens and their roles, kept as SHA-256

state:
  url: sqlite:///state.db           # three slashes: beside this file; sqlite:////abs/path.db or postgresql://...

defaults:
  interval: 15s                     # how often each source is polled
  window: 2h                        # how long a deploy is watched
  grace: 60s                        # veto window of a rollback proposal
  mode: dry-run                     # proposes and records what it would run, touching nothing;
                                    # auto (or manual: waits for an approval) once the rules are trusted

# notify:                           # where proposals, rollbacks and vetoes are announced
#   - {type: webhook, url: "https://hooks.slack.com/services/...", format: slack}

sources:
  health:
    type: http
    url: http://127.0.0.1:8080/health   # the service's health endpoint
    timeout: 2s
    # expect_status: [200]              # default: any 2xx is up

services:
  app:
    health: health                  # the probe verify steps wait for
    # container: app                # its Docker container: a rollback puts the previous image back
    # database: {dsn: "postgresql://watchdogd@127.0.0.1:5432/app"}   # where the down SQL runs
    # rollback: {steps: [container, verify]}   # default: each step it has what it needs for, then verify
    rules:
      - name: health-down
        source: health
        field: up                   # 1 when the probe answers as expected, else 0
        condition: "== 0"
        for: 1m
        action: notify              # a rule only notifies unless it says rollback

      # An example rollback rule: 3 failed probes out of the last 5 after a deploy. It needs
      # something to roll back: uncomment it with the container above (or a database).
      # - name: health-failing
      #   source: health
      #   field: up
      #   condition: "== 0"
      #   failures: {count: 3, of: 5}
      #   action: rollback
"""


def write_starter(directory: Path, tokens: Sequence[NewToken]) -> Written:
    """Write the config and the tokens file into ``directory`` (made if missing).

    Refuses, writing nothing, when either file is already there.
    """
    config, tokens_file = directory / CONFIG_NAME, directory / TOKENS_NAME
    present = [path.name for path in (config, tokens_file) if os.path.lexists(path)]
    if present:
        verb, them = ("exist", "them") if len(present) > 1 else ("exists", "it")
        raise InitRefused(
            f"{' and '.join(present)} already {verb} in {directory}:"
            f" nothing written (move {them} away, or init another directory)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InitRefused(f"cannot make {directory}: {exc.strerror or exc}") from None
    _create(tokens_file, tokens_text(tokens), 0o600)
    try:
        _create(config, CONFIG_TEXT, 0o644)
    except InitRefused:
        tokens_file.unlink()
        raise
    return Written(config, tokens_file, tuple(tokens))


def _create(path: Path, text: str, mode: int) -> None:
    """A new file, never an existing one (O_EXCL: a file that appeared meanwhile is not overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise InitRefused(f"cannot write {path}: {exc.strerror or exc}; nothing written") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def summary(written: Written) -> list[str]:
    """What ``init`` prints: the files, each token once, and what to run next."""
    rows = [("NAME", "ROLE", "TOKEN")] + [(t.name, t.role, t.token) for t in written.tokens]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    config = shlex.quote(str(written.config))
    operator = next((t.name for t in written.tokens if t.role == "operator"), written.tokens[0].name)
    return [
        f"wrote {written.config} and {written.tokens_file}",
        "",
        f"Tokens, shown this once ({written.tokens_file.name} keeps only their SHA-256):",
        *(f"  {name.ljust(widths[0])}  {role.ljust(widths[1])}  {token}" for name, role, token in rows),
        "",
        "Next:",
        f"  watchdogd check --config {config}",
        f"  watchdogd run --config {config}",
        f"  WATCHDOGD_TOKEN=... watchdogd ctl status     # the {operator} token above",
    ]
