"""Log lines: regex match counts over sliding windows, and the source that answers from them.

A follower (a file in ``logfile.py``, a container's log stream in ``docker.py``)
reads in a background thread, cuts the bytes into lines and hands them to a
:class:`LogMatcher`; a poll reads counts from the matcher. Memory is bounded
whatever the log volume: per pattern, match counts bucketed per second for the
longest window asked, a running total, and the last few matching lines as
evidence; the lines themselves are never kept.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.sources.base import Measure

RECENT_MATCHES = 5
"""Matching lines kept per pattern, so that a rollback can show them."""
EVIDENCE_CHARS = 300
"""A kept matching line is cut to this many characters."""
LOG_KINDS = ("count", "absence")


def decode_line(raw: bytes) -> str:
    """Text of a raw line: invalid UTF-8 is replaced, a trailing CR dropped."""
    return raw.decode("utf-8", errors="replace").removesuffix("\r")


class LineBuffer:
    """Cuts a byte stream into lines; a line longer than ``max_line_bytes`` is cut, not dropped.

    Only the first ``max_line_bytes`` of a line are kept while its end is
    awaited, so a writer that never ends its line cannot grow memory.
    """

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by ``data`` (without their newline)."""
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._keep(data, start, end)
                lines.append(bytes(self._partial))
                self._partial.clear()
            else:
                lines.append(data[start : min(end, start + self.max_line_bytes)])
            start = end + 1
        self._keep(data, start, len(data))
        return lines

    def flush(self) -> bytes | None:
        """The unfinished line, if any (the writer went away without a newline)."""
        if not self._partial:
            return None
        line = bytes(self._partial)
        self._partial.clear()
        return line

    def _keep(self, data: bytes, start: int, end: int) -> None:
        room = self.max_line_bytes - len(self._partial)
        if room > 0 and end > start:
            self._partial += data[start : min(end, start + room)]


@dataclass
class _Pattern:
    regex: re.Pattern[str]
    horizon: float = 0.0
    """Longest window asked of this pattern: older buckets are dropped."""
    buckets: deque[list[int]] = field(default_factory=deque)
    """[second, matches] pairs, oldest first."""
    total: int = 0
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_MATCHES))


class LogMatcher:
    """Counts the lines matching each watched pattern, by second; safe across threads.

    Times are whatever clock the caller uses for ``now`` and ``at``; counts are
    to the second: a window counts every second-bucket it overlaps.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._patterns: dict[str, _Pattern] = {}
        self.lines = 0
        """Lines seen, matching or not."""

    def watch(self, pattern: str, over: float = 0.0) -> None:
        """Start counting ``pattern`` (compiled once); ``over`` is a window it will be asked for."""
        with self._lock:
            entry = self._patterns.get(pattern)
            if entry is None:
                try:
                    entry = self._patterns[pattern] = _Pattern(re.compile(pattern))
                except re.error as exc:
                    raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
            entry.horizon = max(entry.horizon, over)

    def watching(self, pattern: str) -> bool:
        with self._lock:
            return pattern in self._patterns

    def feed(self, lines: Iterable[str], now: float) -> None:
        """Lines that arrived at ``now``."""
        second = math.floor(now)
        with self._lock:
            patterns = list(self._patterns.values())
            for line in lines:
                self.lines += 1
                for entry in patterns:
                    if entry.regex.search(line) is None:
                        continue
                    entry.total += 1
                    entry.recent.append(line[:EVIDENCE_CHARS])
                    buckets = entry.buckets
                    if buckets and buckets[-1][0] >= second:
                        # same second, or the clock stepped back: the newest bucket takes it
                        buckets[-1][1] += 1
                    else:
                        buckets.append([second, 1])
            for entry in patterns:
                self._prune(entry, now)

    def count(self, pattern: str, over: float, at: float) -> int:
        """Matches within the ``over`` seconds up to ``at`` (to the second)."""
        with self._lock:
            entry = self._patterns[pattern]
            self._prune(entry, at)
            start = at - over
            return sum(n for second, n in entry.buckets if second + 1 > start and second <= at)

    def total(self, pattern: str) -> int:
        """Matches since the pattern was first watched."""
        with self._lock:
            return self._patterns[pattern].total

    def recent_matches(self, pattern: str) -> list[str]:
        """The last few matching lines, oldest first, each cut to ``EVIDENCE_CHARS``."""
        with self._lock:
            entry = self._patterns.get(pattern)
            return list(entry.recent) if entry else []

    def buckets(self, pattern: str) -> int:
        """How many second-buckets are held for ``pattern`` (memory is bounded by the window)."""
        with self._lock:
            return len(self._patterns[pattern].buckets)

    @staticmethod
    def _prune(entry: _Pattern, now: float) -> None:
        # one second of slack: a poll's ``at`` may trail the reader's ``now`` a little
        oldest = now - entry.horizon - 2
        buckets = entry.buckets
        while buckets and buckets[0][0] + 1 <= oldest:
            buckets.popleft()


class Follower(Protocol):
    """Reads a log in the background and feeds a :class:`LogMatcher`.

    ``attached`` turns true the first time the log could be read and stays
    so; ``problem`` says why it cannot be read right now (None when it can);
    ``fatal`` is true when the problem is the source's own (the Docker engine
    is unreachable) rather than the log's absence.
    """

    matcher: LogMatcher

    @property
    def attached(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    @property
    def fatal(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...


class LogSource:
    """Regex counts over a followed log: ``count`` and ``absence`` measures.

    ``count`` is the matches within the last ``over`` seconds, or since the
    previous poll when ``over`` is 0; ``absence`` is the matches since the
    previous poll (the rule engine turns that into the time since the last
    match). Until the log could be read once, every measure is no data with
    the reason; afterwards the counts stand even while the log is gone, since
    a log that went away is silent.
    """

    def __init__(self, name: str, kind: str, follower: Follower, measures: Sequence[Measure] = ()) -> None:
        self.name = name
        self.kind = kind
        self.follower = follower
        self._cursors: dict[Measure, int] = {}
        self._started = False
        self.watch(measures)

    @property
    def matcher(self) -> LogMatcher:
        return self.follower.matcher

    def watch(self, measures: Sequence[Measure]) -> None:
        """Count these measures' patterns from now on."""
        for measure in measures:
            if measure.kind not in LOG_KINDS:
                continue
            self.matcher.watch(measure.expr, measure.over if measure.kind == "count" else 0.0)
            self._cursors.setdefault(measure, 0)

    def start(self) -> None:
        """Start following the log (once; the first fetch does it when not done before)."""
        if not self._started:
            self._started = True
            self.follower.start()

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        self.watch(measures)
        self.start()
        follower = self.follower
        if not follower.attached:
            problem = follower.problem or "not read yet"
            if follower.fatal:
                raise SourceError(problem)
            return {m: Sample.missing(at, problem) for m in measures}
        result: dict[Measure, Sample] = {}
        for measure in measures:
            if measure.kind not in LOG_KINDS:
                result[measure] = Sample.missing(at, f"a {self.kind} source answers log patterns only")
            elif measure.kind == "count" and measure.over > 0:
                result[measure] = Sample(at, float(self.matcher.count(measure.expr, measure.over, at)))
            else:
                total = self.matcher.total(measure.expr)
                result[measure] = Sample(at, float(total - self._cursors.get(measure, 0)))
                self._cursors[measure] = total
        return result

    def recent_matches(self, pattern: str) -> list[str]:
        """The last few lines that matched ``pattern``, as evidence for a rollback."""
        return self.matcher.recent_matches(pattern)

    async def close(self) -> None:
        if self._started:
            await asyncio.to_thread(self.follower.stop)
