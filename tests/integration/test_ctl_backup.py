"""``watchdogd ctl backup`` and ``ctl backups`` against a daemon's API and the test bed's PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdogd.api import create_app
from watchdogd.auth import Tokens
from watchdogd.cli import build_parser
from watchdogd.daemon import Daemon
from watchdogd.demo import seed000
from watchdogd.testing import FakeClock, FakeSources, NoDocker, config_of, memory_store

pytestmark = pytest.mark.integration

TOKENS = "tokens:\n" + "".join(
    f"  - {{name: {who}, role: {role}, token: {who}-token-0123456789}}\n"
    for who, role in (("ci", "deployer"), ("bob", "viewer"))
)


@pytest.fixture
async def api(tmp_path: Path, pg_dsn: str) -> AsyncIterator[tuple[Daemon, str]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(seed000.BASE_SCHEMA)
    finally:
        await conn.close()
    text = f"""
defaults: {{interval: 1s, grace: 0s, window: 1h}}
backups: {{dir: {tmp_path / "backups"}}}
services:
  api:
    database: {{dsn: "{pg_dsn}", allow_superuser: true}}
    rollback: {{steps: [restore]}}
  down:
    database: {{dsn: "postgresql://postgres@127.0.0.1:1/nowhere"}}
    rollback: {{steps: [restore]}}
  web:
    rollback: {{steps: [verify]}}
"""
    clock = FakeClock()
    daemon = await Daemon.open(
        config_of(text), store=await memory_store(clock), clock=clock, make_source=FakeSources(),
        polling=False, docker=NoDocker(), tick=0.02,
    )  # fmt: skip
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(daemon, Tokens.load(tokens))))
    await client.start_server()
    yield daemon, str(client.make_url("/")).rstrip("/")
    await client.close()
    await daemon.close(2)


async def ctl(url: str, *argv: str, who: str = "ci") -> tuple[int, str, str]:
    def call() -> tuple[int, str, str]:
        args = build_parser().parse_args(["ctl", "--url", url, "--token", f"{who}-token-0123456789", *argv])
        out, err = io.StringIO(), io.StringIO()
        with redirect_stderr(err):
            code = args.handler(args, out)
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


async def test_ctl_backup_prints_the_id_size_checksum_and_rows_of_a_real_dump(
    api: tuple[Daemon, str], tmp_path: Path
) -> None:
    _, url = api
    code, out, err = await ctl(url, "backup", "api")
    assert code == 0, err
    found = re.search(r"^backup (api-\d{8}T\d{6}Z-[0-9a-f]{6}) of api \(database (\S+)\): (.*)$", out, re.M)
    assert found, out
    backup_id = found.group(1)
    dump = tmp_path / "backups" / f"{backup_id}.dump"
    assert dump.read_bytes().startswith(b"PGDMP")  # pg_dump's custom format
    size = dump.stat().st_size
    assert f"({size} bytes)" in found.group(3) or f"{size} bytes" in found.group(3)
    assert f"sha256 {hashlib.sha256(dump.read_bytes()).hexdigest()}" in out
    rows = dict(re.findall(r"^  (public\.\w+)\s+(\d+)$", out, re.M))
    assert rows == {"public.companies": "1", "public.products": "2"}
    assert f"--backup-id {backup_id}" in out  # what to do with it next

    code, out, err = await ctl(url, "--json", "backup", "api")
    assert code == 0, err
    second = json.loads(out)
    assert second["tables"] == {"public.companies": 1, "public.products": 2}
    assert second["by"] == "ci" and len(second["sha256"]) == 64

    code, out, err = await ctl(url, "backup", "api", "--quiet")
    assert code == 0, err
    third = out.strip()
    assert re.fullmatch(r"api-\d{8}T\d{6}Z-[0-9a-f]{6}", third)

    code, out, err = await ctl(url, "backups", "api", who="bob")  # a viewer may list them
    assert code == 0, err
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert set(listed) == {backup_id, second["backup_id"], third}
    assert out.splitlines()[0].split() == ["BACKUP", "CREATED", "SIZE", "TABLES", "ROWS", "BY"]
    assert all(line.split()[-1] == "ci" and " 2 " in line and " 3 " in line for line in out.splitlines()[1:])
    code, out, _ = await ctl(url, "--json", "backups", "api")
    assert code == 0 and len(json.loads(out)["items"]) == 3


async def test_a_deploy_registered_with_the_backup_names_it(api: tuple[Daemon, str]) -> None:
    daemon, url = api
    code, out, err = await ctl(url, "backup", "api", "-q")
    assert code == 0, err
    backup_id = out.strip()
    code, out, err = await ctl(url, "--json", "deploy", "--service", "api", "--backup-id", backup_id)
    assert code == 0, err
    deployment = json.loads(out)
    assert deployment["backup_id"] == backup_id
    stored = await daemon.store.deployment(deployment["id"])
    assert stored is not None and stored.facts.backup_id == backup_id
    code, _, err = await ctl(url, "deploy", "--service", "api", "--backup-id", "api-20200101T000000Z-abcdef")
    assert code == 1 and "unknown_backup" in err


@pytest.mark.parametrize(
    ("service", "who", "code"),
    [
        ("web", "ci", "no_database"),
        ("down", "ci", "database_down"),
        ("nosuch", "ci", "invalid"),
        ("api", "bob", "forbidden"),  # a viewer takes no backup
    ],
)
async def test_a_refused_backup_exits_1_with_the_code(
    api: tuple[Daemon, str], tmp_path: Path, service: str, who: str, code: str
) -> None:
    _, url = api
    exit_code, out, err = await ctl(url, "backup", service, who=who)
    assert (exit_code, out) == (1, "")
    assert re.fullmatch(rf"watchdogd ctl: 4\d\d {code}: .+\n", err), err
    assert list((tmp_path / "backups").glob("*")) == []  # no dump, partial or manifest left behind


async def test_no_backups_yet(api: tuple[Daemon, str]) -> None:
    _, url = api
    code, out, _ = await ctl(url, "backups", "api")
    assert (code, out) == (0, "no backups of api\n")
