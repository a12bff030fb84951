"""The ``command:NAME`` step: a program of the operators' own (``rollback.sh``, ``deploy.sh --version``).

It runs as an argv, no shell unless the config asks for one, in a process
group of its own with a small environment, its output kept (start and end,
secrets masked) for the report. At the timeout the whole group gets SIGTERM,
then SIGKILL after ``kill_after``: a script's children do not outlive it.

A program is not idempotent unless the config says so. Each run is journaled
in the store (``command_runs``) before it starts and when it ends, so that a
plan resumed after a crash does not run a finished program twice, and a
program cut off by the crash (outcome unknown) is not run again until an
operator retries the rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from watchdogd.config.models import CommandStepConfig
from watchdogd.httppost import mask_urls
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.store.actions import CommandRun

log = structlog.get_logger("watchdogd.rollback")

PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
"""What a command sees of watchdogd's environment unless ``inherit_env``: never its tokens."""
PIPE_DRAIN = 2.0
"""After the program exits, how long its output may still flow (a child holding the pipe is let go)."""
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_]+)\}")
SECRET_KEY = re.compile(r"PASS|TOKEN|SECRET|KEY|CREDENTIAL|DSN|AUTH", re.IGNORECASE)
MASK = "***"


class CommandJournal(Protocol):
    async def command_run(self, deployment_id: str, step: str) -> CommandRun | None: ...

    async def command_started(self, deployment_id: str, step: str) -> None: ...

    async def command_ended(
        self, deployment_id: str, step: str, state: str, exit_code: int | None, detail: str
    ) -> None: ...


class CommandError(Exception):
    """The command could not be prepared (an env file unreadable, a value the rollback lacks)."""


def values(target: RollbackTarget) -> dict[str, str | None]:
    """What ``${NAME}`` stands for in an argument."""
    previous = target.previous.image if target.previous else None
    return {
        "service": target.service,
        "deployment_id": target.deployment_id,
        "image": target.current.image if target.current else None,
        "previous_image": previous,
        "previous_tag": image_tag(previous) if previous else None,
    }


def image_tag(image: str) -> str | None:
    """``v1.0.0`` of ``registry:5000/app:v1.0.0``; None for an image named by digest or with no tag."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last and "@" not in image else None


def expand(argv: tuple[str, ...], known: Mapping[str, str | None]) -> list[str]:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in known:
            raise CommandError(f"unknown placeholder ${{{name}}} (known: {', '.join(known)})")
        value = known[name]
        if value is None:
            raise CommandError(f"argv uses ${{{name}}} but this rollback has none")
        return value

    return [PLACEHOLDER.sub(one, arg) for arg in argv]


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments); errors name the line only."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(
            f"env_file {path}: {type(exc).__name__}: {exc.args[-1] if exc.args else ''}"
        ) from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise CommandError(f"env_file {path}, line {number}: not KEY=VALUE")  # the value is never quoted
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


@dataclass
class Capture:
    """A stream's bytes within ``limit``: its start and its end, with how much was left out."""

    limit: int
    head: bytearray
    tail: bytearray
    total: int = 0

    @classmethod
    def of(cls, limit: int) -> Capture:
        return cls(limit, bytearray(), bytearray())

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > self.limit // 2:
            del self.tail[: len(self.tail) - self.limit // 2]

    def text(self) -> str:
        left_out = self.total - len(self.head) - len(self.tail)
        middle = f"\n[... {left_out} bytes left out ...]\n" if left_out > 0 else ""
        return (self.head.decode("utf-8", "replace") + middle + self.tail.decode("utf-8", "replace")).strip()


def masker(secrets: list[str]) -> re.Pattern[str] | None:
    words = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, words))) if words else None


def mask(text: str, secrets: re.Pattern[str] | None) -> str:
    if secrets is not None:
        text = secrets.sub(MASK, text)
    return mask_urls(text)


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int | None
    """None: killed at the timeout (then ``signal`` says how)."""
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str


class CommandStep:
    """Runs one configured program; ``name`` is ``command:NAME``."""

    def __init__(self, name: str, config: CommandStepConfig, journal: CommandJournal | None) -> None:
        self.name = f"command:{name}"
        self.config = config
        self.journal = journal

    async def run(self, target: RollbackTarget) -> StepResult:
        cfg = self.config
        if self.journal is not None:
            known = await self.journal.command_run(target.deployment_id, self.name)
            if known is not None and not cfg.idempotent:
                refusal = self._after_restart(known, target)
                if refusal is not None:
                    if known.state == "running":
                        await self._ended(target, "abandoned", None, refusal.detail)
                    return refusal
        try:
            argv, env, secrets = self._prepare(target)
        except CommandError as exc:
            return StepResult("failed", str(exc))
        if self.journal is not None:
            await self.journal.command_started(target.deployment_id, self.name)
        try:
            outcome = await self._spawn(argv, env, secrets)
        except OSError as exc:  # not found, not executable, cwd missing
            detail = f"{shlex.join(argv[:1])} could not start: {type(exc).__name__}: {exc.strerror or exc}"
            await self._ended(target, "failed", None, detail)
            return StepResult("failed", mask(detail, secrets))
        ok = not outcome.timed_out and outcome.exit_code in cfg.ok_exit_codes
        detail = self._detail(outcome)
        await self._ended(target, "finished" if ok else "failed", outcome.exit_code, detail)
        data = {"exit_code": outcome.exit_code, "seconds": outcome.seconds, "timed_out": outcome.timed_out}
        return StepResult("done" if ok else "failed", detail, data)

    def _after_restart(self, known: CommandRun, target: RollbackTarget) -> StepResult | None:
        """What a run recorded before means for a program that is not idempotent (None: run it)."""
        if known.state == "finished":
            return StepResult(
                "already_done",
                f"finished before (exit {known.exit_code}); not run again (not idempotent)"
                + (f"\n{known.detail}" if known.detail else ""),
            )
        if known.state == "running":
            # Cut off by a crash: it may have done everything, some, or nothing. Only an operator can
            # tell, and an operator's retry finds it abandoned and runs it.
            return StepResult(
                "failed",
                "was running when watchdogd stopped; its outcome is unknown and it is not idempotent:"
                " check what it did, then retry the rollback to run it again",
            )
        return None

    async def _ended(self, target: RollbackTarget, state: str, code: int | None, detail: str) -> None:
        if self.journal is not None:
            await self.journal.command_ended(target.deployment_id, self.name, state, code, detail)

    def _prepare(self, target: RollbackTarget) -> tuple[list[str], dict[str, str], re.Pattern[str] | None]:
        cfg = self.config
        known = values(target)
        argv = ["/bin/sh", "-c", cfg.argv[0]] if cfg.shell else expand(cfg.argv, known)
        env = {k: v for k, v in os.environ.items() if cfg.inherit_env or k in PASSED_ENV}
        from_file = read_env_file(cfg.env_file) if cfg.env_file is not None else {}
        env.update(from_file)
        env.update(cfg.env)
        env.update({f"WATCHDOGD_{k.upper()}": v for k, v in known.items() if v is not None})
        env["WATCHDOGD_REASON"] = target.reason
        secrets = list(from_file.values())
        secrets += [v for k, v in cfg.env.items() if SECRET_KEY.search(k)]
        if cfg.inherit_env:
            secrets += [v for k, v in os.environ.items() if SECRET_KEY.search(k)]
        return argv, env, masker(secrets)

    async def _spawn(self, argv: list[str], env: dict[str, str], secrets: re.Pattern[str] | None) -> Outcome:
        cfg = self.config
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cfg.cwd,
            env=env,
            start_new_session=True,  # its own process group: killed whole at the timeout
        )
        log.info("command_started", step=self.name, pid=proc.pid)
        out, err = Capture.of(cfg.output_limit), Capture.of(cfg.output_limit)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.create_task(_pump(proc.stdout, out)),
            asyncio.create_task(_pump(proc.stderr, err)),
        ]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), cfg.timeout)
            except TimeoutError:
                timed_out = True
                await _stop_group(proc, cfg.kill_after)
            # Output still in the pipes is read; a child that keeps them open is not waited on.
            await asyncio.wait(readers, timeout=PIPE_DRAIN)
        finally:
            for reader in readers:
                reader.cancel()
            if proc.returncode is None:  # cancelled (shutdown): the program does not outlive the step
                await _stop_group(proc, cfg.kill_after)
        return Outcome(
            proc.returncode if not timed_out else None,
            timed_out,
            round(time.monotonic() - started, 3),
            mask(out.text(), secrets),
            mask(err.text(), secrets),
        )

    def _detail(self, outcome: Outcome) -> str:
        cfg = self.config
        if outcome.timed_out:
            head = f"timed out after {cfg.timeout:g}s: process group stopped"
        elif outcome.exit_code is not None and outcome.exit_code < 0:
            head = f"killed by signal {-outcome.exit_code} after {outcome.seconds:g}s"
        else:
            accepted = outcome.exit_code in cfg.ok_exit_codes
            head = f"exit {outcome.exit_code} after {outcome.seconds:g}s" + (
                "" if accepted else f" (expected {', '.join(map(str, cfg.ok_exit_codes))})"
            )
        parts = [head]
        if outcome.stdout:
            parts.append(f"stdout:\n{outcome.stdout}")
        if outcome.stderr:
            parts.append(f"stderr:\n{outcome.stderr}")
        return "\n".join(parts)

    async def describe(self, target: RollbackTarget) -> list[str]:
        cfg = self.config
        try:
            argv = expand(cfg.argv, values(target)) if not cfg.shell else ["sh", "-c", cfg.argv[0]]
        except CommandError as exc:
            return [f"would fail: {exc}"]
        where = f" in {cfg.cwd}" if cfg.cwd else ""
        again = "runs again on resume" if cfg.idempotent else "runs at most once"
        return [f"run {shlex.join(argv)}{where} (timeout {cfg.timeout:g}s, {again})"]


async def _pump(stream: asyncio.StreamReader, into: Capture) -> None:
    while chunk := await stream.read(65536):
        into.add(chunk)


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the program's whole group, SIGKILL after ``grace`` if the program is still there."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    # The group is killed even when the leader went: its children may have ignored the SIGTERM.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5.0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
