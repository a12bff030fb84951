"""A process that executes (or resumes) a journaled rollback plan, as the daemon does.

The crash tests run it with ``WATCHDOGD_FAULT`` set so that it dies at a step
boundary, then again without, and look at what the real systems ended up as.

    python -m tests.testbed.plan_runner STATE_DB SERVICE_JSON HEALTH_URL
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import docker

from watchdogd.config.models import ServiceConfig
from watchdogd.model import RollbackState
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.container import ContainerStep
from watchdogd.rollback.plan import Executor, target_from_json
from watchdogd.rollback.sql import SqlStep
from watchdogd.rollback.steps import VerifyStep
from watchdogd.store import open_store


async def main(state: str, config: ServiceConfig, health_url: str) -> int:
    journal = await open_store(f"sqlite:///{state}")
    client = docker.from_env(timeout=60)

    async def healthy() -> bool:
        try:
            async with asyncio.timeout(2), aiohttp.ClientSession() as session, session.get(health_url) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def health(_: RollbackTarget) -> tuple[bool, str]:
        ok = await healthy()
        return ok, "healthy" if ok else "not answering"

    steps = {
        "container": ContainerStep(client, probe=healthy),
        "sql": SqlStep(),
        "verify": VerifyStep(config.rollback.verify, health, None, poll=0.2),
    }
    executor = Executor(journal, steps)
    records = await journal.unfinished()
    if not records:
        records = await journal.in_states((RollbackState.PENDING,))
    for record in records:
        done = await executor.execute(record, target_from_json(record.target, config))
        print(json.dumps({"id": done.id, "state": done.state, "error": done.error}))
    client.close()
    await journal.aclose()
    return 0


if __name__ == "__main__":
    state_db, service_json, url = sys.argv[1:4]
    service = ServiceConfig.model_validate(json.loads(Path(service_json).read_text()))
    sys.exit(asyncio.run(main(state_db, service, url)))
