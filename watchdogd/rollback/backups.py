"""Database backups a pipeline takes before it migrates: ``pg_dump -Fc`` into the backups directory.

A backup is two files, ``ID.dump`` (mode 0600: it holds the data) and
``ID.json``, its manifest: service, database, when, size, SHA-256, the server's
version and the rows of every table *in the dump's own snapshot* (counted in a
REPEATABLE READ transaction whose snapshot ``pg_dump --snapshot`` then uses),
which is what a restore is verified against. Backups live on this host's
disk, so the manifest beside the dump is the record (a row in a shared state
store would name a file another instance cannot read). The password never goes
on a command line: libpq gets it in ``PGPASSWORD``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from watchdogd.config.models import BackupsConfig, Config
from watchdogd.errors import Conflict, Invalid, NotFound, RollbackError

BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}-\d{8}T\d{6}Z-[0-9a-f]{6}$")
POLL = 0.2
COUNT_ROWS = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class Backup:
    id: str
    service: str
    database: str
    created_at: float
    size: int
    sha256: str
    tables: dict[str, int] = field(default_factory=dict)
    """``schema.table`` -> rows at backup time."""
    server_version: str = ""
    by: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Backup:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def backups_dir(config: Config) -> Path:
    """The configured directory, or ``backups/`` beside a sqlite state file."""
    if config.backups.dir is not None:
        return config.backups.dir
    url = config.state.url.secret()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :]).parent / "backups"
    raise Invalid("backups.dir is not set (required with a postgresql state store)", code="no_backups_dir")


def pg_tool(name: str, settings: BackupsConfig) -> str:
    """``pg_dump`` or ``pg_restore``: in ``bin_dir``, on PATH, or the newest /usr/lib/postgresql/*/bin."""
    if settings.bin_dir is not None:
        return str(settings.bin_dir / name)
    found = shutil.which(name)
    if found:
        return found

    def major(path: str) -> int:
        part = Path(path).parents[1].name
        return int(part) if part.isdigit() else 0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major)
    if not candidates:
        raise RollbackError(f"{name} not found: set backups.bin_dir or install the PostgreSQL client")
    return candidates[-1]


def libpq(dsn: str, database: str | None = None) -> tuple[str, dict[str, str]]:
    """The DSN without its password (and with another database if asked), and libpq's environment."""
    parts = urlsplit(dsn)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = "/" + database if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, "")), env


def database_of(dsn: str) -> str:
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise Invalid("the service's database dsn names no database")
    return name


async def count_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """Exact rows of every table, as ``schema.table``, in the connection's current snapshot."""
    out: dict[str, int] = {}
    for row in await conn.fetch(COUNT_ROWS):
        relation = f"{quote_ident(row['schema'])}.{quote_ident(row['name'])}"
        out[f"{row['schema']}.{row['name']}"] = int(await conn.fetchval(f"SELECT count(*) FROM {relation}"))
    return out


def _manifest(directory: Path, backup_id: str) -> Path:
    if not BACKUP_ID.fullmatch(backup_id):
        raise Invalid(f"'{backup_id}' is not a backup id", code="invalid_backup_id")
    return directory / f"{backup_id}.json"


def dump_path(directory: Path, backup: Backup) -> Path:
    return directory / f"{backup.id}.dump"


def list_backups(directory: Path, service: str | None = None) -> list[Backup]:
    """Backups whose dump is there, newest first."""
    found = []
    for path in directory.glob("*.json") if directory.is_dir() else ():
        try:
            backup = Backup.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if (service is None or backup.service == service) and dump_path(directory, backup).is_file():
            found.append(backup)
    return sorted(found, key=lambda b: b.created_at, reverse=True)


def get_backup(directory: Path, service: str, backup_id: str) -> Backup:
    path = _manifest(directory, backup_id)
    try:
        backup = Backup.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotFound(f"no backup {backup_id}", code="unknown_backup") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise Invalid(f"backup {backup_id}: unreadable manifest: {exc}", code="unknown_backup") from None
    if backup.service != service:
        raise Invalid(
            f"backup {backup_id} is of service '{backup.service}', not '{service}'", code="unknown_backup"
        )
    if not dump_path(directory, backup).is_file():
        raise NotFound(f"backup {backup_id}: its dump is gone", code="unknown_backup")
    return backup


def prune(directory: Path, service: str, settings: BackupsConfig, now: float) -> list[str]:
    """Remove the service's backups past ``keep`` or older than ``max_age`` (the newest stays)."""
    removed = []
    for index, backup in enumerate(list_backups(directory, service)):
        too_old = settings.max_age is not None and now - backup.created_at > settings.max_age
        if index >= settings.keep or (index > 0 and too_old):
            for path in (dump_path(directory, backup), directory / f"{backup.id}.json"):
                path.unlink(missing_ok=True)
            removed.append(backup.id)
    return removed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def run_tool(
    argv: list[str], env: dict[str, str], limit: float, watch: Path | None = None, max_size: int = 0
) -> None:
    """Run ``argv``; raises RollbackError on a non-zero exit, the timeout, or ``watch`` past ``max_size``."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    finished = asyncio.ensure_future(proc.communicate())
    deadline = time.monotonic() + limit
    problem = None
    while not finished.done():
        await asyncio.wait({finished}, timeout=POLL)
        if finished.done():
            break
        if time.monotonic() >= deadline:
            problem = f"{Path(argv[0]).name} did not finish within {limit:g}s"
        elif watch is not None and await asyncio.to_thread(_size, watch) > max_size:
            problem = f"the dump grew past max_size ({max_size} bytes)"
        if problem:
            proc.kill()
            with contextlib.suppress(Exception):
                await finished
            raise RollbackError(problem)
    _, stderr = finished.result()
    if proc.returncode != 0:
        said = stderr.decode(errors="replace").strip()[-2000:]
        raise RollbackError(f"{Path(argv[0]).name} exited {proc.returncode}: {said}")
    if watch is not None and await asyncio.to_thread(_size, watch) > max_size:
        raise RollbackError(f"the dump grew past max_size ({max_size} bytes)")


async def take_backup(config: Config, service: str, by: str, now: float) -> Backup:
    """Dump the service's database now; prune its old backups; returns the new backup."""
    svc = config.services.get(service)
    if svc is None:
        raise NotFound(f"no service '{service}'")
    if svc.database is None:
        raise Invalid(f"service '{service}' has no database to back up", code="no_database")
    settings, directory = config.backups, backups_dir(config)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    dsn = svc.database.dsn.secret()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    backup_id = f"{service}-{stamp}-{secrets.token_hex(3)}"
    final, partial = directory / f"{backup_id}.dump", directory / f".{backup_id}.dump.partial"
    conninfo, env = libpq(dsn)
    started = time.monotonic()
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Conflict(
            f"database of '{service}' unreachable: {type(exc).__name__}", code="database_down"
        ) from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            version = str(await conn.fetchval("SHOW server_version"))
            tables = await count_rows(conn)
            os.close(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
            argv = [pg_tool("pg_dump", settings), "-Fc", f"--snapshot={snapshot}", "-f", str(partial)]
            await run_tool([*argv, f"--dbname={conninfo}"], env, settings.timeout, partial, settings.max_size)
    except RollbackError as exc:
        partial.unlink(missing_ok=True)
        raise Conflict(f"backup of '{service}' failed: {exc}", code="backup_failed") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        await conn.close()
    digest = await asyncio.to_thread(sha256_of, partial)
    backup = Backup(
        backup_id, service, database_of(dsn), now, partial.stat().st_size, digest, tables, version, by,
        round(time.monotonic() - started, 3),
    )  # fmt: skip
    partial.rename(final)
    manifest = directory / f"{backup_id}.json"
    manifest.write_text(json.dumps(backup.to_json(), indent=2) + "\n")
    manifest.chmod(0o600)
    prune(directory, service, settings, now)
    return backup
