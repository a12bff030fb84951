"""A rollback killed at any step boundary and restarted ends done exactly once.

Real Docker engine, real PostgreSQL: v1 runs, v2 is deployed with seed 000's
product-import migration, and a container+sql+verify plan rolls it back in a
separate process that ``WATCHDOGD_FAULT`` kills at one boundary. A second
process resumes from the journal. Afterwards the container runs v1 once, the
bad one is kept renamed once, the ledger has one row and the schema is what
it was before the migration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.testbed.containers import AppContainer, ContainerRegistry, free_port
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ServiceConfig
from watchdogd.demo.seed000 import (
    BASE_SCHEMA,
    MIGRATION_ID,
    SEED_ROLLBACK,
    SEED_VERIFY,
    UP_MIGRATION,
    snapshot,
)
from watchdogd.model import Reason, RollbackState, StepState
from watchdogd.rollback.base import Migration, RollbackTarget
from watchdogd.rollback.container import capture, failed_name
from watchdogd.rollback.plan import FAULT_EXIT, target_to_json
from watchdogd.store import open_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = "dep-7"
BOUNDARIES = [f"{when}:{step}" for step in ("container", "sql", "verify") for when in ("before", "after")]


def run_plan(state: Path, service: Path, health: str, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOGD_FAULT"}
    if fault:
        env["WATCHDOGD_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "tests.testbed.plan_runner", str(state), str(service), health],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("fault", BOUNDARIES)
async def test_killed_at_a_boundary_then_resumed_rolls_back_exactly_once(
    fault: str,
    app_images: Any,
    docker_client: Any,
    container_registry: ContainerRegistry,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    db = await asyncpg.connect(pg_dsn)
    try:
        await db.execute(BASE_SCHEMA)
        before = await snapshot(db)
        await db.execute(UP_MIGRATION)

        name = container_registry.name("crash")
        port = free_port()
        common: dict[str, Any] = {
            "detach": True,
            "name": name,
            "network_mode": "host",
            "labels": container_registry.labels,
            "environment": {"PORT": str(port)},
        }
        v1 = container_registry.track(docker_client.containers.run(APP_V1, **common))
        AppContainer(v1, port, APP_V1).wait_answering(20)
        previous = await capture(docker_client, name)
        v1.remove(force=True)
        v2 = container_registry.track(docker_client.containers.run(APP_V2, **common))
        AppContainer(v2, port, APP_V2).wait_answering(20)
        current = await capture(docker_client, name)

        service = {
            "container": name,
            "database": {
                "dsn": pg_dsn,
                "lock_timeout": "2s",
                "lock_wait": "5s",
                "allow_superuser": True,
                "destructive": "auto",  # what is at stake here is exactly once, not the approval
            },
            "rollback": {
                "steps": ["container", "sql", "verify"],
                "container": {"stop_timeout": "3s", "healthy_timeout": "15s", "settle": "300ms"},
                "verify": {"timeout": "15s"},
            },
        }
        config = ServiceConfig.model_validate(service)
        target = RollbackTarget(
            "api",
            DEPLOY,
            config,
            previous=previous,
            current=current,
            migrations=(Migration(MIGRATION_ID, SEED_ROLLBACK, SEED_VERIFY),),
            fired_rules=("error-rate",),
        )
        state = tmp_path / "state.db"
        journal = await open_store(f"sqlite:///{state}")
        record, _ = await journal.propose(
            DEPLOY,
            "api",
            config.rollback.steps,
            Reason(0.0, "error rate high", rule="error-rate"),
            target_to_json(target),
            RollbackState.PENDING,
            None,
        )
        await journal.aclose()
        service_file = tmp_path / "service.json"
        service_file.write_text(json.dumps(service))
        health = f"http://127.0.0.1:{port}/cgi-bin/health"

        killed = run_plan(state, service_file, health, fault)
        assert killed.returncode == FAULT_EXIT, killed.stderr[-2000:]
        resumed = run_plan(state, service_file, health, None)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads(resumed.stdout.strip().splitlines()[-1])["state"] == "succeeded", resumed.stdout

        # the journal: one plan, every step done, the interrupted one ran again
        journal = await open_store(f"sqlite:///{state}")
        final = await journal.get(record.id)
        await journal.aclose()
        assert final is not None and final.state is RollbackState.SUCCEEDED
        assert [s.state for s in final.steps] == [StepState.DONE] * 3
        interrupted = next(s for s in final.steps if s.name == fault.split(":")[1])
        assert interrupted.attempts == 2

        # the container: v1 under the name, running; the bad one kept once, stopped
        running = docker_client.containers.get(name)
        assert running.image.id == previous.image_id
        assert running.status == "running"
        kept = docker_client.containers.list(all=True, filters={"name": f"^/{name}-failed-"})
        assert [c.name for c in kept] == [failed_name(name, DEPLOY)]
        assert kept[0].status == "exited"
        assert kept[0].image.id == current.image_id

        # the database: one ledger row, the schema as before the migration
        rows = await db.fetch("SELECT service, migration_id, deployment_id FROM watchdogd.rollback_ledger")
        assert [tuple(r) for r in rows] == [("api", MIGRATION_ID, DEPLOY)]
        assert await snapshot(db) == before
    finally:
        await db.close()
