"""Log matching stepped by hand: lines, windows, counts since the last poll, bounded memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from watchdogd.errors import SourceError
from watchdogd.sources.base import Measure
from watchdogd.sources.docker import split_timestamp
from watchdogd.sources.logs import EVIDENCE_CHARS, RECENT_MATCHES, LineBuffer, LogMatcher, LogSource

PRISMA = r"PrismaClient\w*Error"


# --- lines -------------------------------------------------------------------------------


def test_lines_split_across_chunks() -> None:
    buffer = LineBuffer(100)
    assert buffer.feed(b"first\nsec") == [b"first"]
    assert buffer.feed(b"ond\n\nthird") == [b"second", b""]
    assert buffer.flush() == b"third"
    assert buffer.flush() is None


def test_long_line_is_cut_not_dropped_and_the_next_one_is_whole() -> None:
    buffer = LineBuffer(10)
    assert buffer.feed(b"0123456789ABCDEF\nshort\n") == [b"0123456789", b"short"]
    # a line arriving in pieces is capped while it waits for its end
    assert buffer.feed(b"x" * 7) == []
    assert buffer.feed(b"y" * 50_000) == []
    assert buffer.feed(b"z\nnext\n") == [b"xxxxxxxyyy", b"next"]


# --- windows -----------------------------------------------------------------------------


def test_count_over_a_sliding_window() -> None:
    matcher = LogMatcher()
    matcher.watch(PRISMA, over=60)
    matcher.feed(["PrismaClientKnownRequestError: boom", "GET /ok 200"], now=1000.2)
    matcher.feed(["PrismaClientValidationError", "PrismaClientKnownRequestError"], now=1030.5)
    assert matcher.count(PRISMA, 60, at=1030.5) == 3
    assert matcher.count(PRISMA, 60, at=1060.0) == 3  # 1000.2 is still inside (1000.0, 1060.0]
    assert matcher.count(PRISMA, 60, at=1061.5) == 2  # the first second has left the window
    assert matcher.count(PRISMA, 10, at=1035.0) == 2
    assert matcher.count(PRISMA, 60, at=1091.0) == 0
    assert matcher.total(PRISMA) == 3
    assert matcher.lines == 4


def test_every_pattern_counts_on_its_own() -> None:
    matcher = LogMatcher()
    matcher.watch("ERROR", over=30)
    matcher.watch("timeout", over=30)
    matcher.feed(["ERROR db timeout", "ERROR disk", "ok"], now=5.0)
    assert matcher.count("ERROR", 30, at=5.0) == 2
    assert matcher.count("timeout", 30, at=5.0) == 1


def test_memory_is_bounded_by_the_longest_window() -> None:
    matcher = LogMatcher()
    matcher.watch("x", over=60)
    for second in range(10_000):
        matcher.feed(["x"] * 3, now=float(second))
    # one bucket per second of the window (plus slack), not one per line or per second ever seen
    assert matcher.buckets("x") <= 63
    assert matcher.total("x") == 30_000
    # (9939, 9999] overlaps 61 second-buckets: the window errs toward counting, by under a second
    assert matcher.count("x", 60, at=9999.0) == 183
    assert matcher.count("x", 60, at=10000.0) == 180


def test_recent_matches_are_few_and_cut() -> None:
    matcher = LogMatcher()
    matcher.watch("E")
    matcher.feed([f"E{i} " + "." * 1000 for i in range(20)], now=1.0)
    recent = matcher.recent_matches("E")
    assert len(recent) == RECENT_MATCHES
    assert recent[0].startswith("E15 ") and recent[-1].startswith("E19 ")
    assert all(len(line) == EVIDENCE_CHARS for line in recent)
    assert matcher.recent_matches("never watched") == []


def test_invalid_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        LogMatcher().watch("(unclosed")


# --- docker timestamps -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stamp", "line"),
    [
        (b"2024-05-01T10:00:00.123456789Z hello", 1714557600_123456789, b"hello"),
        (b"2024-05-01T10:00:00.5Z hello world", 1714557600_500000000, b"hello world"),
        (b"2024-05-01T10:00:00Z ", 1714557600_000000000, b""),
        (b"2024-05-01T12:00:00.1+02:00 x", 1714557600_100000000, b"x"),
        (b"no timestamp here", None, b"no timestamp here"),
    ],
)
def test_docker_timestamp_prefix(raw: bytes, stamp: int | None, line: bytes) -> None:
    assert split_timestamp(raw) == (stamp, line)


# --- the source over a follower ----------------------------------------------------------


@dataclass
class StubFollower:
    matcher: LogMatcher = field(default_factory=LogMatcher)
    attached: bool = False
    problem: str | None = None
    fatal: bool = False
    started: int = 0
    stopped: int = 0

    def start(self) -> None:
        self.started += 1

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped += 1


async def test_counts_since_previous_poll_and_over_a_window() -> None:
    follower = StubFollower(attached=True)
    window = Measure("count", PRISMA, over=60)
    per_poll = Measure("count", PRISMA)
    absence = Measure("absence", "SystemGate")
    source = LogSource("logs", "file", follower, [window, per_poll, absence])
    follower.matcher.feed(["PrismaClientKnownRequestError", "SystemGate tick"], now=100.0)
    first = await source.fetch([window, per_poll, absence], at=100.5)
    assert [first[m].value for m in (window, per_poll, absence)] == [1.0, 1.0, 1.0]
    follower.matcher.feed(["PrismaClientKnownRequestError"] * 2, now=110.0)
    second = await source.fetch([window, per_poll, absence], at=110.5)
    assert [second[m].value for m in (window, per_poll, absence)] == [3.0, 2.0, 0.0]
    third = await source.fetch([window, per_poll, absence], at=175.0)
    assert [third[m].value for m in (window, per_poll, absence)] == [0.0, 0.0, 0.0]
    assert source.recent_matches(PRISMA) == ["PrismaClientKnownRequestError"] * 3
    assert follower.started == 1
    await source.close()
    assert follower.stopped == 1


async def test_no_data_until_the_log_could_be_read() -> None:
    follower = StubFollower(problem="no such file: /var/log/api.log")
    measure = Measure("count", "x", over=60)
    source = LogSource("logs", "file", follower)
    sample = (await source.fetch([measure], at=1.0))[measure]
    assert sample.value is None and sample.reason == "no such file: /var/log/api.log"
    follower.attached, follower.problem = True, None
    assert (await source.fetch([measure], at=2.0))[measure].value == 0.0
    # once read, a log that went away is silent, not unknown
    follower.problem = "no such file: /var/log/api.log"
    assert (await source.fetch([measure], at=3.0))[measure].value == 0.0


async def test_unreachable_engine_is_a_source_error() -> None:
    follower = StubFollower(problem="cannot reach the Docker engine: refused", fatal=True)
    source = LogSource("logs", "docker_logs", follower)
    with pytest.raises(SourceError, match="cannot reach the Docker engine"):
        await source.fetch([Measure("count", "x", over=60)], at=1.0)


async def test_a_field_measure_is_no_data_on_a_log_source() -> None:
    source = LogSource("logs", "file", StubFollower(attached=True))
    measure = Measure("field", "running")
    sample = (await source.fetch([measure], at=1.0))[measure]
    assert sample.value is None and "log patterns only" in (sample.reason or "")
