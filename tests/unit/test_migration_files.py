"""Migrations read from the operators' directory, per layout, with each file's SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from watchdogd.config.models import MigrationsDir
from watchdogd.errors import Invalid
from watchdogd.model import Migration
from watchdogd.rollback.migrations import drifted, files_for, read_migration

LAYOUTS = {
    "plain": ("20251227_import/down.sql", "20251227_import/verify.sql", "20251227_import"),
    "prisma": ("20251227_import/down.sql", "20251227_import/verify.sql", "20251227_import"),
    "flyway": ("U2.1__add_import.sql", "U2.1__add_import.verify.sql", "2.1"),
    "alembic": ("ae1027a6acf.down.sql", "ae1027a6acf.verify.sql", "ae1027a6acf"),
    "golang-migrate": ("000042_add_import.down.sql", "000042_add_import.verify.sql", "000042"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_finds_the_down_script_and_its_verify_file(tmp_path: Path, layout: str) -> None:
    down, verify, migration_id = LAYOUTS[layout]
    for name, text in ((down, "DROP TABLE t;\n"), (verify, "SELECT true;\nSELECT 1 = 1")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if layout == "flyway":
        (tmp_path / "V2.1__add_import.sql").write_text("CREATE TABLE t ();")
        (tmp_path / "U2__older.sql").write_text("DROP TABLE old;")
    source = MigrationsDir(dir=tmp_path, layout=layout)  # type: ignore[arg-type]
    assert files_for(source, migration_id) == (tmp_path / down, tmp_path / verify)
    migration = read_migration(source, migration_id)
    assert (migration.down_sql, migration.verify, migration.source) == (
        "DROP TABLE t;\n",
        ("SELECT true", "SELECT 1 = 1"),
        "file",
    )
    assert migration.files[0] == (str(tmp_path / down), hashlib.sha256(b"DROP TABLE t;\n").hexdigest())
    with pytest.raises(Invalid, match=str(tmp_path)) as caught:
        read_migration(source, "999")
    assert caught.value.code == "unknown_migration"


@pytest.mark.parametrize("migration_id", ["../etc", "a/b", ".hidden", "", "x" * 300])
def test_an_id_is_never_a_path(tmp_path: Path, migration_id: str) -> None:
    with pytest.raises(Invalid) as caught:
        files_for(MigrationsDir(dir=tmp_path / "m"), migration_id)
    assert caught.value.code == "unknown_migration"


def test_a_file_changed_after_registration_is_named(tmp_path: Path) -> None:
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "down.sql").write_text("DROP TABLE t;")
    migration = read_migration(MigrationsDir(dir=tmp_path), "m1")
    assert drifted([migration]) == []
    (tmp_path / "m1" / "down.sql").write_text("DROP TABLE users;")
    (change,) = drifted([migration])
    assert "m1/down.sql changed since registration" in change
    assert migration.to_json()["files"][0]["sha256"] == migration.files[0][1]
    assert Migration.from_json(migration.to_json()) == migration
