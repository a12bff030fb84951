"""Backups with the test bed's pg_dump and restores with its pg_restore: seed 000's base put back."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.testbed import postgres
from watchdogd.config.models import Config
from watchdogd.demo import seed000
from watchdogd.errors import Conflict
from watchdogd.rollback.backups import dump_path, list_backups, take_backup
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.restore import RestoreStep, names

pytestmark = pytest.mark.integration


def config(tmp_path: Path, dsn: str, **backups: Any) -> Config:
    return Config.model_validate(
        {
            "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "backups": {"dir": str(tmp_path / "backups"), **backups},
            "services": {
                "api": {
                    "database": {"dsn": dsn, "allow_superuser": True},
                    "rollback": {"steps": ["restore"]},
                }
            },
        }
    )


@pytest.fixture
async def replaced_dropped() -> AsyncIterator[list[str]]:
    """Databases a restore set aside, dropped after the test."""
    made: list[str] = []
    yield made
    for name in made:
        await postgres.drop_database(name)


async def tables(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        names_ = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        return {n: int(await conn.fetchval(f'SELECT count(*) FROM "{n}"')) for n in sorted(names_)}
    finally:
        await conn.close()


async def seed_base(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(seed000.BASE_SCHEMA)
        await conn.execute("INSERT INTO companies VALUES ('c2', 'Globex')")
        await conn.execute(
            "INSERT INTO products (id, name, \"companyId\") SELECT 'p' || g, 'product ' || g, 'c1' "
            "FROM generate_series(3, 52) g"
        )
    finally:
        await conn.close()


async def migrate_and_write(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(seed000.UP_MIGRATION)
        await conn.execute("INSERT INTO companies VALUES ('c3', 'Initech')")
        await conn.execute("DELETE FROM products WHERE id IN ('p1', 'p2')")
    finally:
        await conn.close()


def target(tmp_path: Path, cfg: Config, deployment: str = "d1") -> RollbackTarget:
    return RollbackTarget("api", deployment, cfg.services["api"], reason="error rate")


async def test_restore_puts_seed000s_base_back_and_keeps_what_came_after(
    tmp_path: Path, pg_dsn: str, replaced_dropped: list[str]
) -> None:
    await seed_base(pg_dsn)
    cfg = config(tmp_path, pg_dsn)
    backup = await take_backup(cfg, "api", "ci-pipeline", time.time())
    assert backup.tables["public.companies"] == 2
    assert backup.tables["public.products"] == 52
    path = dump_path(tmp_path / "backups", backup)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"PGDMP")  # pg_dump's custom format
    before = await tables(pg_dsn)
    await migrate_and_write(pg_dsn)
    assert "product_images" in await tables(pg_dsn)

    async def backup_of(deployment_id: str) -> str | None:
        return backup.id if deployment_id == "d1" else None

    step = RestoreStep(cfg, backup_of)
    database = postgres_name(pg_dsn)
    replaced_dropped.append(names(database, "d1", backup.id)[1])
    result = await step.run(target(tmp_path, cfg))
    assert result.status == "done", result.detail
    assert await tables(pg_dsn) == before  # the migration's tables gone, the rows as they were
    report = result.data["tables"]
    assert report["public.companies"] == {"rows_now": 3, "rows_at_backup": 2}
    assert report["public.products"] == {"rows_now": 50, "rows_at_backup": 52}
    assert report["public.product_images"] == {"rows_now": 0, "rows_at_backup": None}
    assert "public.companies 3 -> 2" in result.detail
    kept = postgres.dsn_for(result.data["replaced_database"])
    assert (await tables(kept))["companies"] == 3  # what was written after the backup is set aside
    again = await step.run(target(tmp_path, cfg))
    assert again.status == "already_done", again.detail
    assert await tables(pg_dsn) == before


async def test_a_restore_that_fails_leaves_the_live_database_as_it_was(tmp_path: Path, pg_dsn: str) -> None:
    await seed_base(pg_dsn)
    cfg = config(tmp_path, pg_dsn)
    backup = await take_backup(cfg, "api", "ci", time.time())
    await migrate_and_write(pg_dsn)
    after = await tables(pg_dsn)
    # a dump that pg_restore cannot read to the end, its manifest agreeing with it
    path = dump_path(tmp_path / "backups", backup)
    path.write_bytes(path.read_bytes()[:-200])
    manifest = tmp_path / "backups" / f"{backup.id}.json"
    raw = json.loads(manifest.read_text())
    import hashlib

    raw["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(raw))

    async def backup_of(_: str) -> str | None:
        return backup.id

    result = await RestoreStep(cfg, backup_of).run(target(tmp_path, cfg))
    assert result.status == "failed"
    assert "pg_restore" in result.detail
    assert await tables(pg_dsn) == after
    restoring, replaced = names(postgres_name(pg_dsn), "d1", backup.id)
    assert not await postgres.database_exists(restoring)
    assert not await postgres.database_exists(replaced)


async def test_a_dump_changed_since_the_backup_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    await seed_base(pg_dsn)
    cfg = config(tmp_path, pg_dsn)
    backup = await take_backup(cfg, "api", "ci", time.time())
    path = dump_path(tmp_path / "backups", backup)
    path.write_bytes(path.read_bytes() + b"x")

    async def backup_of(_: str) -> str | None:
        return backup.id

    result = await RestoreStep(cfg, backup_of).run(target(tmp_path, cfg))
    assert result.status == "failed"
    assert "SHA-256" in result.detail


async def test_no_backup_named_skips(tmp_path: Path, pg_dsn: str) -> None:
    cfg = config(tmp_path, pg_dsn)

    async def backup_of(_: str) -> str | None:
        return None

    result = await RestoreStep(cfg, backup_of).run(target(tmp_path, cfg))
    assert result.status == "skipped"


async def test_backups_past_the_size_limit_fail_and_leave_nothing(tmp_path: Path, pg_dsn: str) -> None:
    await seed_base(pg_dsn)
    cfg = config(tmp_path, pg_dsn, max_size=10)
    with pytest.raises(Conflict, match="max_size"):
        await take_backup(cfg, "api", "ci", time.time())
    assert list((tmp_path / "backups").iterdir()) == []


async def test_old_backups_are_pruned(tmp_path: Path, pg_dsn: str) -> None:
    await seed_base(pg_dsn)
    cfg = config(tmp_path, pg_dsn, keep=2)
    made = [await take_backup(cfg, "api", "ci", 1_700_000_000.0 + n) for n in range(3)]
    kept = list_backups(tmp_path / "backups", "api")
    assert [b.id for b in kept] == [made[2].id, made[1].id]
    assert not dump_path(tmp_path / "backups", made[0]).exists()


def postgres_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]
