"""A command as a source: its exit code, the last number it prints, or its failed tests.

The command runs in its own process group with no shell (unless asked), its
output kept bounded; at the timeout the whole group is killed, children too.
A poll runs the command once and answers every measure from that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from watchdogd.config.models import ExecSource
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.sources.base import Measure

log = structlog.get_logger("watchdogd.sources")

OUTPUT_LIMIT = 4096
"""Bytes of output kept: the tail, where a test runner prints its summary."""
REPORT_LIMIT = 20 << 20
"""A JUnit report past this size is refused rather than parsed."""
KILL_MARGIN = 0.1
"""Seconds before the poll's own timeout at which the command is killed, so its reason wins."""
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True, slots=True)
class Run:
    """One run of the command: how it ended and the tail of what it printed."""

    started: float
    exit_code: int | None
    """None when it was killed at the timeout."""
    output: str
    reason: str | None = None


class ExecCommand:
    kind = "exec"

    def __init__(self, name: str, config: ExecSource) -> None:
        self.name = name
        self.config = config
        self.armed = not config.after_deploy
        self.gate: Callable[[], bool] = lambda: True
        """Whether to run now: with several replicas, only the leader runs commands."""
        self.last_run: Run | None = None

    @property
    def last_output(self) -> str:
        """The tail of the last run's output (secrets from env_file masked)."""
        return self.last_run.output if self.last_run is not None else ""

    def arm(self) -> None:
        """A deploy is watched: an ``after_deploy`` command runs from the next poll on."""
        self.armed = True

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        if not self.armed:
            return {m: Sample(at, None, "waiting for a deploy (after_deploy)") for m in measures}
        if not self.gate():
            return {m: Sample(at, None, "not run here: the leading replica runs it") for m in measures}
        run = await self.run()
        self.last_run = run
        return {m: await self._answer(m, run, at) for m in measures}

    async def run(self) -> Run:
        """Run the command once, bounded by its timeout; never leaves a process behind."""
        config = self.config
        secrets = self._env_file()
        env = {**os.environ, **secrets, **config.env}
        cwd = str(config.cwd) if config.cwd is not None else None
        started = time.time()
        limit = max(config.timeout - KILL_MARGIN, config.timeout * 0.9)
        try:
            args = ("/bin/sh", "-c", config.command) if isinstance(config.command, str) else config.command
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group, killed whole at the timeout
            )
        except OSError as exc:
            raise SourceError(f"cannot start the command: {exc.strerror or exc}") from exc
        tail = bytearray()
        reader = asyncio.ensure_future(_read_tail(process, tail))
        try:
            async with asyncio.timeout(limit):
                exit_code = await process.wait()
                await reader
        except TimeoutError:
            _kill_group(process)
            await _reap(process, reader)
            output = self._mask(tail.decode(errors="replace"), secrets)
            log.warning("command_timed_out", source=self.name, timeout=config.timeout)
            return Run(started, None, output, f"command timed out after {config.timeout:g}s and was killed")
        finally:
            # a cancelled poll (or a timeout) must not leave the group running
            if process.returncode is None or not reader.done():
                _kill_group(process)
                await _reap(process, reader)
        # children that outlived the command still belong to its run
        _kill_group(process)
        return Run(started, exit_code, self._mask(tail.decode(errors="replace"), secrets))

    async def _answer(self, measure: Measure, run: Run, at: float) -> Sample:
        if run.reason is not None:
            return Sample(at, None, run.reason)
        field = measure.expr
        if field == "exit_code":
            return Sample(at, float(run.exit_code if run.exit_code is not None else -1))
        if field == "last_number":
            numbers = _NUMBER.findall(run.output)
            if not numbers:
                return Sample(at, None, f"no number in the output (exit code {run.exit_code})")
            return Sample(at, float(numbers[-1]))
        if field == "failed_tests":
            try:
                # up to REPORT_LIMIT bytes read and parsed: off the event loop
                return Sample(at, float(await asyncio.to_thread(self._failed_tests, run)))
            except SourceError as exc:
                return Sample(at, None, str(exc))
        return Sample(at, None, f"unknown exec field '{field}'")

    def _failed_tests(self, run: Run) -> int:
        if self.config.report is None:
            raise SourceError("no report configured")
        path = self.config.report
        if not path.is_absolute() and self.config.cwd is not None:
            path = self.config.cwd / path
        try:
            stat = path.stat()
            if stat.st_mtime < run.started - 0.05:
                raise SourceError(f"report {path} was not written by this run (exit code {run.exit_code})")
            if stat.st_size > REPORT_LIMIT:
                raise SourceError(f"report {path} is over {REPORT_LIMIT} bytes")
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"no report at {path} (exit code {run.exit_code})") from None
        except OSError as exc:
            raise SourceError(f"cannot read report {path}: {exc.strerror or exc}") from exc
        return failed_tests(raw, str(path))

    def _env_file(self) -> dict[str, str]:
        path = self.config.env_file
        if path is None:
            return {}
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read env_file {path}: {type(exc).__name__}") from None
        return parse_env_file(text, str(path))

    @staticmethod
    def _mask(output: str, secrets: Mapping[str, str]) -> str:
        for value in secrets.values():
            if len(value) >= 4:
                output = output.replace(value, "***")
        return output

    async def close(self) -> None:
        return None


def parse_env_file(text: str, where: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments skipped, one level of quotes removed.

    A bad line is named by its number only: its value may be a secret.
    """
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE.match(stripped)
        if match is None:
            raise SourceError(f"env_file {where}: line {number} is not KEY=VALUE")
        key, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


def failed_tests(raw: bytes, where: str) -> int:
    """Failures plus errors over every test suite of a JUnit XML report.

    Counted on the innermost suites (nested suites repeat their children's
    totals); a suite without the attributes counts its failed test cases.
    """
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise SourceError(f"report {where} is not XML: {exc}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise SourceError(f"report {where} is not a JUnit report (root <{root.tag}>)")
    leaves = [suite for suite in root.iter("testsuite") if suite.find("testsuite") is None]
    if not leaves:
        if root.tag == "testsuites" and ("failures" in root.attrib or "errors" in root.attrib):
            return _count(root, where)
        raise SourceError(f"report {where} has no test suite")
    return sum(_count(suite, where) for suite in leaves)


def _count(suite: ElementTree.Element, where: str) -> int:
    if "failures" in suite.attrib or "errors" in suite.attrib:
        try:
            return int(suite.attrib.get("failures", "0")) + int(suite.attrib.get("errors", "0"))
        except ValueError:
            raise SourceError(f"report {where}: failures and errors must be whole numbers") from None
    return sum(
        1
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    )


async def _read_tail(process: asyncio.subprocess.Process, tail: bytearray) -> None:
    assert process.stdout is not None
    while chunk := await process.stdout.read(65536):
        tail += chunk
        if len(tail) > OUTPUT_LIMIT:
            del tail[: len(tail) - OUTPUT_LIMIT]


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _reap(process: asyncio.subprocess.Process, reader: asyncio.Future[None]) -> None:
    """Wait for the killed command; a grandchild that left the group must not hold the poll."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await process.wait()
    if not reader.done():
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(reader)
        reader.cancel()
