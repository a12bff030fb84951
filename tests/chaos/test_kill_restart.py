"""``watchdogd run`` killed at every step boundary of a container+sql+verify rollback.

``WATCHDOGD_FAULT`` makes the process exit at once (no cleanup, as ``kill -9``)
at the named boundary; the next ``watchdogd run`` on the same state resumes
the journaled plan. Whatever the boundary, the deploy is rolled back exactly
once: one rollback, v1 running under the service's name, one bad container
kept aside, one ledger row, the schema as it was before the migration.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Watchdogd
from tests.e2e.test_daemon import Story, config_for, first_rollback_in, rollbacks
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import AppBehaviour
from watchdogd.rollback.plan import FAULT_ENV, FAULT_EXIT

pytestmark = pytest.mark.integration

BOUNDARIES = [f"{when}:{step}" for step in ("container", "sql", "verify") for when in ("before", "after")]


@pytest.mark.parametrize("boundary", BOUNDARIES)
async def test_killed_at_a_step_boundary_rolls_back_exactly_once(
    boundary: str,
    watchdogd: Any,
    app_images: Any,
    docker_client: Any,
    container_registry: ContainerRegistry,
    pg_dsn: str,
) -> None:
    story = Story(container_registry, pg_dsn)
    before = await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn))
    wd.start(env={FAULT_ENV: boundary})
    # registered before the swap: v2 logs its error at once, and a deploy noticed from Docker
    # before its registration arrives would start rolling back without the migration
    story.register(wd)
    await story.deploy_v2(
        AppBehaviour(error_ratio=0.0, log_line="PrismaClientKnownRequestError: P2022", log_every=1.0)
    )
    assert wd.process is not None
    wd.wait_for(f"watchdogd dying {boundary}", lambda: wd.process.poll() is not None, 60)
    assert wd.process.returncode == FAULT_EXIT, wd.log()

    wd.start()  # the same state file: the plan resumes from its journal
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=60)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert [s["name"] for s in done["steps"]] == ["container", "sql", "verify"]
    assert len(rollbacks(wd)) == 1
    await story.assert_rolled_back_once(before)
    assert wd.stop() == 0
