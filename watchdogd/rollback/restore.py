"""The restore step: the service's database put back as the deployment's backup holds it.

Restored beside, then swapped, never in place: the dump goes with
``pg_restore --single-transaction --exit-on-error`` into a new database
(``DB_restoring_H``), every table's rows are compared with the backup's
manifest, and only then the two are swapped by renaming both in one
transaction (``DB`` -> ``DB_replaced_H``, ``DB_restoring_H`` -> ``DB``) after
terminating the connections to them. Until that COMMIT the live database is
untouched; after it, it is the restored one. Restoring in place with
``--clean`` would leave tables the migration created (they are not in the
dump), hold ACCESS EXCLUSIVE locks on every table while it runs, and lose the
rows written after the backup for good; here they stay in ``DB_replaced_H``
(unless ``keep_replaced: false``).

Resumable: a swap already done (``DB_replaced_H`` exists, ``DB_restoring_H``
does not) is ``already_done``; a half-made ``DB_restoring_H`` is dropped and
made again. The role needs CREATEDB, to own the database, and to be able to
terminate the application's connections (the same role, or pg_signal_backend).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from watchdogd.config.models import Config
from watchdogd.errors import RequestError, RollbackError
from watchdogd.rollback.backups import (
    Backup,
    backups_dir,
    count_rows,
    database_of,
    dump_path,
    get_backup,
    libpq,
    pg_tool,
    quote_ident,
    run_tool,
    sha256_of,
)
from watchdogd.rollback.base import RollbackTarget, StepResult

BackupOf = Callable[[str], Awaitable[str | None]]
"""The backup id a deployment names, by the deployment's id."""
ADMIN_DATABASE = "postgres"


def names(database: str, deployment_id: str, backup_id: str) -> tuple[str, str]:
    """The restoring and the replaced databases' names (within PostgreSQL's 63 bytes)."""
    tag = hashlib.sha256(f"{deployment_id}/{backup_id}".encode()).hexdigest()[:8]
    base = database.encode()[:40].decode(errors="ignore")
    return f"{base}_restoring_{tag}", f"{base}_replaced_{tag}"


def table_report(now: dict[str, int], backup: dict[str, int]) -> dict[str, dict[str, int | None]]:
    return {t: {"rows_now": now.get(t), "rows_at_backup": backup.get(t)} for t in sorted({*now, *backup})}


def table_lines(report: dict[str, dict[str, int | None]]) -> str:
    def show(n: int | None) -> str:
        return "-" if n is None else str(n)

    return ", ".join(f"{t} {show(r['rows_now'])} -> {show(r['rows_at_backup'])}" for t, r in report.items())


class RestoreStep:
    """Restores the backup the deployment names; skipped when it names none."""

    name = "restore"

    def __init__(self, config: Config, backup_of: BackupOf) -> None:
        self.config = config
        self.backup_of = backup_of

    async def run(self, target: RollbackTarget) -> StepResult:
        backup_id = await self.backup_of(target.deployment_id)
        if backup_id is None:
            return StepResult("skipped", "the deployment names no backup_id: nothing to restore")
        if target.config.database is None:
            return StepResult("failed", "the service has no database to restore")
        try:
            backup = get_backup(backups_dir(self.config), target.service, backup_id)
        except RequestError as exc:
            return StepResult("failed", str(exc))
        try:
            async with asyncio.timeout(target.config.rollback.restore.timeout):
                return await self._restore(target, backup)
        except TimeoutError:
            return StepResult(
                "failed", f"not finished within {target.config.rollback.restore.timeout:g}s; the live "
                "database was not swapped",
            )  # fmt: skip
        except (RollbackError, asyncpg.PostgresError, OSError) as exc:
            return StepResult("failed", f"restore of {backup.id}: {type(exc).__name__}: {exc}")

    async def _restore(self, target: RollbackTarget, backup: Backup) -> StepResult:
        assert target.config.database is not None
        settings = target.config.rollback.restore
        dsn = target.config.database.dsn.secret()
        database = database_of(dsn)
        restoring, replaced = names(database, target.deployment_id, backup.id)
        admin = await asyncpg.connect(dsn, database=ADMIN_DATABASE, timeout=10)
        try:
            exists = {
                r["datname"]
                for r in await admin.fetch(
                    "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])",
                    [database, restoring, replaced],
                )
            }
            data: dict[str, Any] = {"backup_id": backup.id, "replaced_database": replaced}
            if replaced in exists and restoring not in exists:
                counts = await self._counts(dsn, None)
                data["tables"] = table_report(counts, backup.tables)
                return StepResult("already_done", f"{database} was restored from {backup.id} already", data)
            if replaced in exists:
                return StepResult(
                    "failed",
                    f"both {restoring} and {replaced} exist: a swap was interrupted in a way this step "
                    "cannot judge; look at them and drop one",
                )
            path = dump_path(backups_dir(self.config), backup)
            digest = await asyncio.to_thread(sha256_of, path)
            if digest != backup.sha256:
                return StepResult("failed", f"{path.name} changed since the backup (SHA-256 differs)")
            now = await self._counts(dsn, None)
            if restoring in exists:
                await admin.execute(f"DROP DATABASE {quote_ident(restoring)} WITH (FORCE)")
            await self._create_like(admin, database, restoring)
            try:
                await self._pg_restore(dsn, restoring, path, settings.timeout)
                restored = await self._counts(dsn, restoring)
                wrong = {t: (restored.get(t), n) for t, n in backup.tables.items() if restored.get(t) != n}
                if wrong or set(restored) - set(backup.tables):
                    raise RollbackError(
                        "restored rows differ from the backup's: "
                        + ", ".join(f"{t} {got} != {want}" for t, (got, want) in wrong.items())
                    )
                await self._swap(admin, database, restoring, replaced, settings.swap_attempts)
            except BaseException:
                await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(restoring)} WITH (FORCE)")
                raise
            if not settings.keep_replaced:
                await admin.execute(f"DROP DATABASE {quote_ident(replaced)} WITH (FORCE)")
                data["replaced_database"] = None
        finally:
            await admin.close()
        data["tables"] = table_report(now, backup.tables)
        kept = f"; what it held is kept in {replaced}" if settings.keep_replaced else ""
        return StepResult(
            "done",
            f"{database} restored from {backup.id} and verified (rows now -> at backup: "
            f"{table_lines(data['tables'])}){kept}",
            data,
        )

    @staticmethod
    async def _counts(dsn: str, database: str | None) -> dict[str, int]:
        conn = await asyncpg.connect(dsn, timeout=10, database=database)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await count_rows(conn)
        finally:
            await conn.close()

    @staticmethod
    async def _create_like(admin: asyncpg.Connection, database: str, new: str) -> None:
        """An empty database with the original's owner, encoding, locale, grants and settings."""
        row = await admin.fetchrow(
            "SELECT d.oid, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS enc, "
            "d.datcollate, d.datctype, d.datacl IS NULL AS default_acl FROM pg_database d WHERE datname = $1",
            database,
        )
        if row is None:
            raise RollbackError(f"database {database} does not exist")
        await admin.execute(
            f"CREATE DATABASE {quote_ident(new)} TEMPLATE template0 OWNER {quote_ident(row['owner'])} "
            f"ENCODING '{row['enc']}' LC_COLLATE '{row['datcollate']}' LC_CTYPE '{row['datctype']}'"
        )
        if not row["default_acl"]:
            await admin.execute(f"REVOKE ALL ON DATABASE {quote_ident(new)} FROM PUBLIC")
            grants = await admin.fetch(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
                "ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who, a.privilege_type "
                "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
                database,
            )
            for grant in grants:
                await admin.execute(
                    f"GRANT {grant['privilege_type']} ON DATABASE {quote_ident(new)} TO {grant['who']}"
                )
        settings = await admin.fetch(
            "SELECT unnest(setconfig) AS setting FROM pg_db_role_setting "
            "WHERE setdatabase = $1 AND setrole = 0",
            row["oid"],
        )
        for setting in settings:
            key, _, value = str(setting["setting"]).partition("=")
            literal = "'" + value.replace("'", "''") + "'"
            await admin.execute(f"ALTER DATABASE {quote_ident(new)} SET {quote_ident(key)} TO {literal}")

    async def _pg_restore(self, dsn: str, database: str, path: Path, limit: float) -> None:
        conninfo, env = libpq(dsn, database)
        argv = [
            pg_tool("pg_restore", self.config.backups),
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={conninfo}",
            str(path),
        ]
        await run_tool(argv, env, limit)

    @staticmethod
    async def _swap(admin: asyncpg.Connection, database: str, new: str, replaced: str, attempts: int) -> None:
        """Both renames in one transaction, after ending the sessions on both databases."""
        last: Exception | None = None
        for attempt in range(attempts):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()",
                [database, new],
            )
            try:
                async with admin.transaction():
                    await admin.execute(
                        f"ALTER DATABASE {quote_ident(database)} RENAME TO {quote_ident(replaced)}"
                    )
                    await admin.execute(
                        f"ALTER DATABASE {quote_ident(new)} RENAME TO {quote_ident(database)}"
                    )
                return
            except asyncpg.ObjectInUseError as exc:  # the application reconnected in between
                last = exc
                await asyncio.sleep(0.1 * (attempt + 1))
        raise RollbackError(f"could not swap {new} in for {database} in {attempts} attempt(s): {last}")

    async def describe(self, target: RollbackTarget) -> list[str]:
        backup_id = await self.backup_of(target.deployment_id)
        if backup_id is None:
            return ["nothing: the deployment names no backup_id"]
        return [
            f"pg_restore backup {backup_id} into a new database, compare every table's rows with the "
            "backup's, then swap it in for the live one (renamed *_replaced_*); waits for approval by "
            "default: rows written after the backup leave the live database"
        ]
