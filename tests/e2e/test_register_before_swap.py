"""A pipeline that registers before it swaps the container: one deployment, completed by the Docker event."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Watchdogd
from tests.e2e.test_daemon import Story, config_for, first_rollback_in
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import AppBehaviour
from watchdogd.demo.seed000 import MIGRATION_ID

pytestmark = pytest.mark.integration


async def test_a_registration_before_the_swap_is_completed_by_the_docker_event(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    before = await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn))
    wd.start()
    registered = story.register(wd)  # v1 still runs: the pipeline registers first
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))

    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)

    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert done["deployment_id"] == registered["id"]
    status, listed = wd.get("/v1/deployments")
    assert status == 200
    assert [d["id"] for d in listed["items"] if d["service"] == "api"] == [registered["id"]]
    await story.assert_rolled_back_once(before)
    assert await story.ledger() == [("api", MIGRATION_ID)]
    assert wd.stop() == 0
