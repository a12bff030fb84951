"""A plain log file followed across rotation, as ``tail -F`` does.

Rotation by rename (or delete and recreate) shows as a new inode at the path:
the rest of the old file is read, then the new one from its start. Between the
rename and the new file, the writer may still append to the old one (it
reopens later): the old file is kept open and read for ``ORPHAN_GRACE``
seconds while nothing is at the path, then let go (a deleted file's space is
not held for ever). A file that shrank was truncated: it is read again from
its start. A file that does not exist yet is waited for.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import structlog

from watchdogd.clock import now as steady
from watchdogd.config.models import FileSource
from watchdogd.sources.base import Measure
from watchdogd.sources.logs import LineBuffer, LogMatcher, LogSource, decode_line

log = structlog.get_logger("watchdogd.sources.logfile")

ORPHAN_GRACE = 10.0
"""Seconds a file renamed away or deleted is still read while no new file is at its path."""

READ_CHUNK = 1 << 16


class FileFollower:
    """Follows ``path`` in a background thread, checking it every ``interval`` seconds.

    A file present at start is read from its end (what was there before does
    not concern this deploy), unless ``from_start``; a file that appears later
    is read from its start.
    """

    def __init__(
        self,
        path: Path,
        matcher: LogMatcher,
        max_line_bytes: int,
        *,
        interval: float = 0.25,
        from_start: bool = False,
        clock: Callable[[], float] = steady,
    ) -> None:
        self.path = path
        self.matcher = matcher
        self.interval = interval
        self.from_start = from_start
        self.clock = clock
        self._buffer = LineBuffer(max_line_bytes)
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._checked = False
        self._attached = False
        self._problem: str | None = None
        self._missing_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def problem(self) -> str | None:
        return self._problem

    @property
    def fatal(self) -> bool:
        return False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"follow-file:{self.path}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the follower must outlive a surprise; the next step retries
                log.exception("file_follow_failed", path=str(self.path))
                self._close()
            self._stop.wait(self.interval)

    def step(self) -> None:
        """One look at the file: reopen on rotation, rewind on truncation, read what is new."""
        first = not self._checked
        self._checked = True
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            if self._file is not None and self._orphan_kept():
                self._read(self._file)  # its writer may append until it reopens the new file
                return
            self._drain_and_close()
            self._problem = f"no such file: {self.path}"
            return
        except OSError as exc:
            self._problem = f"cannot read {self.path}: {exc.strerror}"
            return
        self._missing_since = None
        identity = (stat.st_dev, stat.st_ino)
        if self._file is not None and identity != self._identity:
            log.info("log_file_rotated", path=str(self.path))
            self._drain_and_close()
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - held open across steps
            except OSError as exc:
                self._problem = f"cannot read {self.path}: {exc.strerror}"
                return
            self._identity = (os.fstat(self._file.fileno()).st_dev, os.fstat(self._file.fileno()).st_ino)
            if first and not self.from_start:
                self._file.seek(0, os.SEEK_END)
        elif stat.st_size < self._file.tell():
            log.info("log_file_truncated", path=str(self.path))
            self._feed_partial()
            self._file.seek(0)
        self._attached = True
        self._problem = None
        self._read(self._file)

    def _orphan_kept(self) -> bool:
        """Whether the open file, gone from its path, is still within its grace."""
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        return now - self._missing_since < ORPHAN_GRACE

    def _read(self, file: BinaryIO) -> None:
        while data := file.read(READ_CHUNK):
            lines = self._buffer.feed(data)
            if lines:
                self.matcher.feed((decode_line(line) for line in lines), self.clock())

    def _feed_partial(self) -> None:
        tail = self._buffer.flush()
        if tail is not None:
            self.matcher.feed([decode_line(tail)], self.clock())

    def _drain_and_close(self) -> None:
        """The rotated file may still have lines written before the rename: read them first."""
        if self._file is not None:
            try:
                self._read(self._file)
            except OSError as exc:
                log.warning("log_file_drain_failed", path=str(self.path), error=str(exc))
            self._feed_partial()
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._identity = None


def file_source(
    name: str,
    config: FileSource,
    measures: Sequence[Measure] = (),
    *,
    interval: float = 0.25,
    from_start: bool = False,
) -> LogSource:
    """A ``file`` source over ``config.path``, counting the patterns of ``measures``."""
    follower = FileFollower(
        config.path, LogMatcher(), config.max_line_bytes, interval=interval, from_start=from_start
    )
    return LogSource(name, "file", follower, measures)
