"""What ``watchdogd check`` verifies beyond the config's own text.

``check_files``: the files a config points to (tokens file, TLS key pair, an
exec source's working directory, ``env_file`` and program) exist and read as
what they should be. ``check_live``: every source is polled once and every
rule evaluated once against what it answers, so that a rollback rule that
cannot see (a PromQL typo the server refuses, an unreachable Prometheus, a
scrape with no such series) is found before a deploy depends on it.
``check_databases``: each service's database answers, not as a PostgreSQL
superuser unless the service allows it (the sql step would refuse), and its
role has every privilege the sql step needs (``sqlgrants``: the ledger, the
migration table, the tables the down SQL touches), or each missing one is
printed with the GRANT that fixes it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from watchdogd.auth import Tokens
from watchdogd.config.loader import locate
from watchdogd.config.models import Config, ExecSource
from watchdogd.errors import ConfigError, ConfigProblem, SourceError
from watchdogd.model import Sample
from watchdogd.sources import build_source
from watchdogd.sources.base import Poller
from watchdogd.telemetry import Metrics
from watchdogd.watch.world import World


def check_files(config: Config, filename: str) -> list[ConfigProblem]:
    """Problems with the files the config names, one per file, each naming the field."""
    problems: list[ConfigProblem] = []
    server = config.server
    if server.tokens_file is not None:
        try:
            Tokens.load(server.tokens_file)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if server.tls is not None:
        for field in ("cert", "key"):
            path = getattr(server.tls, field)
            if not os.access(path, os.R_OK):
                problems.append(ConfigProblem(filename, None, f"server.tls.{field}", f"cannot read {path}"))
    for name, source in config.sources.items():
        if isinstance(source, ExecSource):
            problems += _exec_problems(name, source, filename)
    return problems


def check_tokens(config: Config) -> list[ConfigProblem]:
    """The tokens file's problems when it is here to read: ``check`` without ``--live``.

    A file that is not here is the host's and is left to ``--live``; one that is here
    and broken would stop ``watchdogd run``, so ``check`` never calls it valid.
    """
    path = config.server.tokens_file
    if path is None or not Path(path).exists():
        return []
    try:
        Tokens.load(path)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _exec_problems(name: str, source: ExecSource, filename: str) -> list[ConfigProblem]:
    where = f"sources.{name}"
    problems = []
    cwd = source.cwd
    if cwd is not None and not Path(cwd).is_dir():
        problems.append(ConfigProblem(filename, None, f"{where}.cwd", f"{cwd} is not a directory"))
    if source.env_file is not None:
        from watchdogd.sources.exec import parse_env_file

        try:
            parse_env_file(Path(source.env_file).read_text(encoding="utf-8"), str(source.env_file))
        except OSError as exc:
            problems.append(
                ConfigProblem(
                    filename, None, f"{where}.env_file", f"cannot read {source.env_file}: {exc.strerror}"
                )
            )
        except SourceError as exc:
            problems.append(ConfigProblem(filename, None, f"{where}.env_file", str(exc)))
    if not source.shell:
        program = source.command[0] if isinstance(source.command, tuple) else source.command.split()[0]
        found = _program(program, cwd)
        if found is None:
            problems.append(
                ConfigProblem(
                    filename, None, f"{where}.command", f"no program {program!r} to run (not on PATH)"
                )
            )
        elif not os.access(found, os.X_OK):
            problems.append(ConfigProblem(filename, None, f"{where}.command", f"{found} is not executable"))
    return problems


def _program(program: str, cwd: Path | None) -> str | None:
    if "/" not in program:
        return shutil.which(program)
    path = Path(program)
    if not path.is_absolute() and cwd is not None:
        path = Path(cwd) / path
    return str(path) if path.exists() else None


def warnings(config: Config, path: str) -> list[str]:
    """What is allowed but likely a mistake, one line each with its place in the file."""
    out = []
    if not config.notify:
        for name, service in config.services.items():
            for index, rule in enumerate(service.rules):
                if rule.action == "notify":
                    where = locate(path, ("services", name, "rules", index, "action"))
                    out.append(
                        f"{where.file}:{where.line}: {where.field}: warning: a notify rule and no"
                        " `notify:` webhook: nobody will hear it (the API and metrics still show it)"
                    )
    return out


@dataclass(frozen=True, slots=True)
class Seen:
    """One rule as a single poll of its source saw it."""

    service: str
    rule: str
    action: str
    sample: Sample
    verdict: str
    """``sees``: a value; ``warming``: the source answers, the window fills with time; ``blind``."""

    @property
    def line(self) -> str:
        where = f"{self.service}/{self.rule}"
        if self.verdict == "sees":
            return f"ok     {where}: {self.sample.value:g}"
        if self.verdict == "warming":
            return f"ok     {where}: the source answers; {self.sample.reason}"
        if self.verdict == "skipped":
            return f"-      {where}: {self.sample.reason}"
        return f"BLIND  {where} ({self.action}): {self.sample.reason or 'no data'}"


async def check_live(config: Config) -> list[Seen]:
    """Poll every source once (exec commands excepted: they may have effects) and judge each rule."""
    world = World.build(config)
    metrics = Metrics(CollectorRegistry())
    seen: list[Seen] = []
    async with aiohttp.ClientSession() as session:
        for name, source_config in config.sources.items():
            runs = world.reading(name)
            if not runs:
                continue
            if isinstance(source_config, ExecSource):
                for run in runs:
                    skipped = Sample(
                        0.0, None, "an exec source is not run by check --live (it may have effects)"
                    )
                    seen.append(Seen(run.service, run.rule.name, run.rule.action, skipped, "skipped"))
                continue
            source = build_source(name, source_config, session)
            try:
                poller = Poller(source, source_config.timeout, metrics)
                samples = await poller.poll(list(dict.fromkeys(r.measure for r in runs)), time.time())
            finally:
                await source.close()
            for run in runs:
                sample = samples[run.measure]
                if sample.value is not None:
                    verdict = "sees"
                elif (sample.reason or "").startswith("warming up") or (sample.reason or "").startswith(
                    "not enough"
                ):
                    verdict = "warming"
                else:
                    verdict = "blind"
                seen.append(Seen(run.service, run.rule.name, run.rule.action, sample, verdict))
    return seen


@dataclass(frozen=True)
class DatabaseSeen:
    """One service's database as a connection to it found it; ``missing``: the privileges the sql step
    lacks, each with the statement that grants it."""

    service: str
    refused: bool
    line: str
    missing: tuple[str, ...] = ()


async def check_databases(config: Config, connect_within: float = 5.0) -> list[DatabaseSeen]:
    """Connect to each service's database once: the role it connects as, refused when a superuser, and
    every privilege the sql step would miss (sqlgrants), one line each with the GRANT that fixes it."""
    import asyncpg

    from watchdogd.rollback import sqlgrants
    from watchdogd.rollback.sql import SUPERUSER

    seen: list[DatabaseSeen] = []
    for name, service in config.services.items():
        database = service.database
        if database is None:
            continue
        try:
            conn = await asyncpg.connect(database.dsn.secret(), timeout=connect_within)
            try:
                row = await conn.fetchrow(SUPERUSER)
                superuser = bool(row[1]) if row is not None else False
                lacking = [] if superuser else await sqlgrants.missing(conn, database)
            finally:
                await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = f"{type(exc).__name__}: {exc}".replace(database.dsn.secret(), str(database.dsn))
            seen.append(
                DatabaseSeen(name, True, f"DOWN   {name}: cannot connect to {database.dsn}: {reason}")
            )
            continue
        user = str(row[0]) if row is not None else "?"
        if superuser and not database.allow_superuser:
            line = (
                f"REFUSED {name}: {database.dsn} connects as {user}, a PostgreSQL superuser; give watchdogd "
                "a role that owns the service's schema, or set database.allow_superuser: true"
            )
            seen.append(DatabaseSeen(name, True, line))
        elif lacking:
            head = (
                f"MISSING {name}: {database.dsn} as {user} lacks {len(lacking)} privilege(s) for the sql step"
            )
            line = "\n      ".join([head, *lacking])
            seen.append(DatabaseSeen(name, True, line, tuple(lacking)))
        else:
            what = (
                "a superuser (allowed)"
                if superuser
                else "not a superuser, with every privilege the sql step needs"
            )
            seen.append(DatabaseSeen(name, False, f"ok     {name}: {database.dsn} as {user}, {what}"))
    return seen
