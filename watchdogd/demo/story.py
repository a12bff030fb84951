"""``watchdogd demo``: a bad deploy, noticed and rolled back, container and SQL, on this machine.

v1 of a small app runs with its schema in a database of its own; v2 is
deployed with seed 000's product-import migration, answers 20% errors and
logs ``PrismaClientKnownRequestError``. watchdogd (in this process, with its
API on 127.0.0.1) notices, proposes, waits out a short veto window, rolls the
container and the SQL back and verifies. The timeline is printed as it
happens; everything started is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from watchdogd.config import load_config
from watchdogd.demo.images import APP_V1, APP_V2, AppBehaviour, ensure_app_images
from watchdogd.demo.seed000 import (
    BASE_SCHEMA,
    MIGRATION_ID,
    SEED_ROLLBACK,
    SEED_VERIFY,
    UP_MIGRATION,
    snapshot,
)

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEADLINE = 110.0

CONFIG = """
server: {{listen: "127.0.0.1:{api_port}"}}
state: {{url: "sqlite:///state.db"}}
logging: {{level: warning, format: json}}
defaults: {{interval: 1s, window: 10m, grace: 5s, mode: auto}}
sources:
  app: {{type: scrape, url: "http://127.0.0.1:{port}/cgi-bin/metrics", timeout: 2s}}
  health: {{type: http, url: "http://127.0.0.1:{port}/cgi-bin/health", timeout: 2s}}
  logs: {{type: docker_logs, container: {name}}}
services:
  api:
    container: {name}
    health: health
    database:
      dsn: "{dsn}"
      migrations: {{dir: migrations, layout: plain}}   # migrations/<id>/down.sql and verify.sql
      allow_superuser: true   # the demo's throw-away database belongs to the local postgres superuser
      lock_timeout: 2s
      lock_wait: 5s
      destructive: auto
    rollback:
      steps: [container, sql, verify]
      container: {{stop_timeout: 3s, healthy_timeout: 20s, settle: 500ms}}
      verify: {{timeout: 30s}}
    rules:
      - name: error-rate          # seed 000: "API error rate > 1%"; here 5% held 5s
        source: app
        ratio: {{numerator: 'http_requests_total{{code=~"5.."}}', denominator: http_requests_total, over: 5s}}
        condition: "> 0.05"
        for: 5s
        action: rollback
      - name: prisma-errors       # seed 003: Prisma client errors
        source: logs
        pattern: 'PrismaClient\\w*Error'
        condition: ">= 1"
        over: 5s
        action: rollback
"""


class Timeline:
    """Lines with the time since the deploy, as they happen."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def reset(self) -> None:
        self.start = time.monotonic()

    def say(self, what: str, mark: str | None = None) -> None:
        elapsed = time.monotonic() - self.start
        if mark is not None:
            self.marks.setdefault(mark, elapsed)
        print(f"  {elapsed:6.1f}s  {what}", file=self.out, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def preflight(out: TextIO) -> Any:
    """The Docker client; exits with what to run when the engine or PostgreSQL is missing."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        print(
            f"watchdogd demo: the Docker engine does not answer ({type(exc).__name__}).\n"
            "  Start it with: sudo bash scripts/testbed.sh\n"
            "  (or: dockerd --storage-driver=vfs --bridge=none --iptables=false --ip-masq=false &)",
            file=out,
        )
        raise SystemExit(2) from None
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        await conn.close()
    except Exception as exc:
        print(
            f"watchdogd demo: PostgreSQL does not answer at 127.0.0.1:5432 ({type(exc).__name__}).\n"
            "  Start it with: sudo bash scripts/testbed.sh\n"
            "  (or: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)",
            file=out,
        )
        raise SystemExit(2) from None
    return client


async def run_demo(keep: bool = False, out: TextIO = sys.stdout) -> int:
    import logging

    from watchdogd.api import create_app
    from watchdogd.auth import Tokens
    from watchdogd.daemon import Daemon
    from watchdogd.model import why
    from watchdogd.rollback.migrations import MigrationRequest
    from watchdogd.telemetry import configure_logging
    from watchdogd.watch.deployments import Registration

    configure_logging(logging.WARNING, "console", stream=sys.stderr)
    client = await preflight(out)
    suffix = secrets.token_hex(3)
    name = f"watchdogd-demo-api-{suffix}"
    database = f"watchdogd_demo_{suffix}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
    port, api_port = _free_port(), _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="watchdogd-demo-"))
    timeline = Timeline(out)
    daemon: Daemon | None = None
    runner = None
    ok = False
    print(f"watchdogd demo: app {name} on 127.0.0.1:{port}, database {database}", file=out)
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        ensure_app_images(client)
        db = await asyncpg.connect(dsn)
        await db.execute(BASE_SCHEMA)
        before = await snapshot(db)
        labels = {"org.watchdogd.demo": suffix}
        v1_env = AppBehaviour(error_ratio=0.0).env(port)
        client.containers.run(
            APP_V1, detach=True, name=name, network_mode="host", environment=v1_env, labels=labels
        )
        await _wait_http(f"http://127.0.0.1:{port}/cgi-bin/health", 20)
        print("  v1 is running with its schema; starting watchdogd", file=out)

        folder = workdir / "migrations" / MIGRATION_ID
        folder.mkdir(parents=True)
        (folder / "down.sql").write_text(SEED_ROLLBACK)
        (folder / "verify.sql").write_text(";\n".join(SEED_VERIFY) + ";\n")
        config_path = workdir / "watchdogd.yaml"
        config_path.write_text(CONFIG.format(api_port=api_port, port=port, name=name, dsn=dsn))
        config = load_config(config_path)
        daemon = await Daemon.open(config, docker=client)
        daemon.report.listeners.append(lambda kind, data: _narrate(timeline, kind, data))
        from aiohttp import web

        runner = web.AppRunner(create_app(daemon, Tokens.empty()), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", api_port).start()

        timeline.reset()
        timeline.say("deploy: v2 replaces v1, with the product-import migration", "deploy")
        client.containers.get(name).remove(force=True)
        await db.execute(UP_MIGRATION)
        v2_env = AppBehaviour(error_ratio=0.2).env(port)
        client.containers.run(
            APP_V2, detach=True, name=name, network_mode="host", environment=v2_env, labels=labels
        )
        registration = Registration(
            "api", APP_V2, APP_V1, wanted=(MigrationRequest(MIGRATION_ID),), rehearse=True
        )
        deployment, registered = await daemon.deployments.register(registration, "demo")
        rehearsal = registered.rehearsal or {}
        timeline.say(
            f"registered deployment {deployment.id}; rollback rehearsal: {rehearsal.get('detail', 'none')}"
        )

        record = await _wait_rollback(daemon, deployment.id, timeline, DEADLINE)
        running = client.containers.get(name)
        after = await snapshot(db)
        ledger = await db.fetch("SELECT migration_id FROM watchdogd.rollback_ledger")
        await db.close()
        image_ok = APP_V1 in running.image.tags
        schema_ok = after == before
        ledger_ok = [r["migration_id"] for r in ledger] == [MIGRATION_ID]
        ok = record is not None and record.state == "succeeded" and image_ok and schema_ok and ledger_ok
        print("", file=out)
        print("summary:", file=out)
        print(f"  rollback:  {record.state if record else 'none within the deadline'}", file=out)
        print(f"  container: {name} runs {', '.join(running.image.tags)}", file=out)
        print(f"  schema:    {'as before the migration' if schema_ok else 'DIFFERENT from before'}", file=out)
        print(f"  ledger:    {len(ledger)} row(s) in watchdogd.rollback_ledger", file=out)
        if record is not None and record.reasons:
            print(f"  why:       {why(record.reasons)}", file=out)
        if keep:
            print(
                f"\nleft running (--keep): API and /metrics at http://127.0.0.1:{api_port}, "
                f"app at http://127.0.0.1:{port}, database {database}. Ctrl-C to clean up.",
                file=out,
            )
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    finally:
        if daemon is not None:
            await daemon.close(10)
        if runner is not None:
            await runner.cleanup()
        for container in client.containers.list(all=True, filters={"label": f"org.watchdogd.demo={suffix}"}):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        client.close()
    print(f"\n{'rolled back as expected' if ok else 'the rollback did not happen as expected'}", file=out)
    return 0 if ok else 1


def _narrate(timeline: Timeline, kind: str, data: dict[str, Any]) -> None:
    if kind == "rule_state":
        to, rule = data.get("to"), data.get("rule")
        if to == "pending":
            timeline.say(f"rule {rule} pending: {data.get('reason')}", "pending")
        elif to == "firing":
            timeline.say(f"rule {rule} firing: {data.get('reason')}", "firing")
        elif to == "ok" and data.get("from") == "firing":
            timeline.say(f"rule {rule} back to ok", "cleared")
        elif to == "ok":
            timeline.say(f"rule {rule} ok: {data.get('reason')}")
    elif kind == "proposal" and "reasons" in data:  # a new proposal, not a reason joining one
        timeline.say(f"rollback proposed ({data.get('rollback_id')}): veto window open", "proposal")
    elif kind == "rollback":
        state = data.get("state")
        timeline.say(f"rollback {state}", f"rollback_{state}")


async def _wait_rollback(daemon: Any, deployment_id: str, timeline: Timeline, deadline: float) -> Any:
    """Follow the rollback's steps until it ends; None when the deadline passes first."""
    end = time.monotonic() + deadline
    told: set[tuple[str, str]] = set()
    while time.monotonic() < end:
        record = await daemon.store.latest_for(deployment_id)
        if record is not None:
            for step in record.steps:
                if step.state != "pending" and (step.name, step.state) not in told:
                    told.add((step.name, step.state))
                    detail = f": {step.detail}" if step.detail and step.state != "running" else ""
                    timeline.say(f"step {step.name} {step.state}{detail}")
            if record.final:
                return record
        await asyncio.sleep(0.2)
    return None


async def _wait_http(url: str, within: float) -> None:
    import aiohttp

    end = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(2), session.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {within:g}s")
