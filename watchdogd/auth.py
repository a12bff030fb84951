"""Bearer tokens and roles: who may look, who may decide.

The tokens file (CONTRACT.md) maps a token, or its SHA-256, to a name (shown
in the audit trail) and a role: ``viewer`` < ``operator`` < ``admin``. Tokens
are compared by their SHA-256 in constant time; the file never holds a token
in memory longer than it takes to hash it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from watchdogd.config.loader import parse_yaml
from watchdogd.errors import ConfigError, ConfigProblem

Role = Literal["viewer", "deployer", "operator", "admin"]
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|#x[0-9a-fA-F]+")
RANKS: dict[str, int] = {"viewer": 0, "deployer": 1, "operator": 2, "admin": 3}
"""viewer < deployer (registers deployments, pushes alerts; no votes) < operator < admin."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    def may(self, role: Role) -> bool:
        return RANKS[self.role] >= RANKS[role]


class Tokens:
    """The known tokens, by SHA-256."""

    def __init__(self, entries: dict[str, Principal]) -> None:
        self._by_digest = entries

    @classmethod
    def empty(cls) -> Tokens:
        return cls({})

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Read a tokens file; ConfigError naming the file, line and entry for anything wrong.

        No message quotes the file: a YAML error says where it is, never what is there,
        since the offending line may hold a token.
        """
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([ConfigProblem(name, None, "", f"cannot read: {exc.strerror}")]) from None
        except UnicodeDecodeError:
            raise ConfigError([ConfigProblem(name, None, "", "not UTF-8 text")]) from None
        try:
            yaml.reader.Reader(text)
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            raise ConfigError(
                [ConfigProblem(name, line, "", "invalid YAML: a character YAML does not allow")]
            ) from None
        try:
            data, lines = parse_yaml(text, name)
        except ConfigError as exc:
            raise ConfigError([_unquoted(p) for p in exc.problems]) from None
        items = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ConfigError(
                [ConfigProblem(name, lines.get(("tokens",)), "tokens", "expected a list of tokens")]
            )
        entries: dict[str, Principal] = {}
        first_line: dict[str, int | None] = {}
        problems: list[ConfigProblem] = []

        def problem(index: int, key: str | None, message: str) -> None:
            loc: tuple[str | int, ...] = ("tokens", index) if key is None else ("tokens", index, key)
            line = lines.get(loc, lines.get(("tokens", index)))
            field = f"tokens[{index}]" + (f".{key}" if key else "")
            problems.append(ConfigProblem(name, line, field, message))

        for index, item in enumerate(items):
            if not isinstance(item, dict):
                problem(index, None, "expected a mapping")
                continue
            who, role = item.get("name"), item.get("role")
            token, digest = item.get("token"), item.get("sha256")
            if not isinstance(who, str) or not who:
                problem(index, "name", "required")
                continue
            if role not in RANKS:
                problem(index, "role", "must be viewer, deployer, operator or admin")
                continue
            if (token is None) == (digest is None):
                problem(index, None, "give exactly one of token or sha256")
                continue
            key = "token" if token is not None else "sha256"
            if token is not None:
                if not isinstance(token, str) or len(token) < 16:
                    problem(index, "token", "must be at least 16 characters")
                    continue
                digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                problem(index, "sha256", "must be 64 hex digits (the token's SHA-256, no prefix; quote it)")
                continue
            digest = digest.lower()
            if digest in entries:
                same, at = entries[digest].name, first_line[digest]
                where = f" (line {at})" if at is not None else ""
                problem(index, key, f"the same token as '{same}'{where}: each needs its own")
                continue
            entries[digest] = Principal(who, role)
            first_line[digest] = lines.get(("tokens", index))
        if problems:
            raise ConfigError(problems)
        return cls(entries)

    def check(self, token: str) -> Principal | None:
        """The principal of ``token``, or None; every known digest is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found: Principal | None = None
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def _unquoted(problem: ConfigProblem) -> ConfigProblem:
    """``problem`` without what it quotes of the file: a YAML error may show a token."""
    message = _QUOTED.sub("'...'", problem.message.split("\n", 1)[0])
    return ConfigProblem(problem.file, problem.line, problem.field, message)


class Throttle:
    """Slows down token guessing without ever slowing down a valid token.

    Failures are counted per address and per token prefix (its first
    ``prefix`` characters, kept only as part of a hash): one address trying many
    tokens, and one family of guesses spread over many addresses, are each
    slowed. The first ``free`` failures within ``window`` seconds cost nothing;
    after that each further *failed* answer waits ``base * 2**(n - free)``
    seconds, at most ``ceiling``. A valid token is checked first and answered at
    once, and clears nothing: an attacker holding a viewer token cannot reset
    its count while it guesses an operator's. At most ``max_waiting`` answers
    wait at once; beyond, the caller answers 429 at once (waiting costs a
    connection each). At most ``capacity`` keys are remembered, the stalest
    forgotten first.
    """

    def __init__(
        self,
        free: int = 5,
        window: float = 60.0,
        base: float = 0.25,
        ceiling: float = 5.0,
        capacity: int = 10_000,
        max_waiting: int = 32,
        prefix: int = 6,
    ) -> None:
        self.free = free
        self.window = window
        self.base = base
        self.ceiling = ceiling
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.prefix = prefix
        self.waiting = 0
        self._failures: dict[str, list[float]] = {}

    def keys(self, peer: str, token: str) -> tuple[str, str]:
        start = token[: self.prefix].encode("utf-8", "surrogatepass")
        return f"addr {peer}", "prefix " + hashlib.sha256(start).hexdigest()[:16]

    def failures(self, key: str, now: float) -> int:
        recent = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return len(recent)

    def delay(self, peer: str, token: str, now: float) -> float:
        """How long the answer to a failed ``token`` from ``peer`` waits."""
        over = max(self.failures(key, now) for key in self.keys(peer, token)) - self.free
        return 0.0 if over < 0 else min(self.ceiling, self.base * 2**over)

    def fail(self, peer: str, token: str, now: float) -> int:
        """Count a failure; the most recent failures under either key."""
        counts = []
        for key in self.keys(peer, token):
            if key not in self._failures and len(self._failures) >= self.capacity:
                stalest = min(self._failures, key=lambda k: self._failures[k][-1])
                del self._failures[stalest]
            times = self._failures.setdefault(key, [])
            times.append(now)
            del times[: -(self.free + 16)]
            counts.append(self.failures(key, now))
        return max(counts)

    def enter(self) -> bool:
        """A slot to wait in; False when ``max_waiting`` answers already wait."""
        if self.waiting >= self.max_waiting:
            return False
        self.waiting += 1
        return True

    def leave(self) -> None:
        self.waiting = max(0, self.waiting - 1)


class Rejections:
    """Logs refusals by kind, at most one line per kind per ``interval`` seconds.

    An attack makes thousands of refusals a second; one line each would fill the
    disk (and hide everything else). The first refusal of a kind is logged at
    once, then one line per interval with how many there were since the last one.
    """

    def __init__(
        self, logger: Any, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def note(self, kind: str, **context: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            return
        self._last[kind] = now
        count = self._unlogged.pop(kind)
        self.logger.warning("api_refused", kind=kind, count=count, per_seconds=self.interval, **context)
