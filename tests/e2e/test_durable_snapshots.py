"""The pre-deploy container lives in the state store: a restart of watchdogd loses nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Watchdogd
from tests.e2e.test_daemon import Story, config_for, first_rollback_in
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import APP_V1, APP_V2, AppBehaviour

pytestmark = pytest.mark.integration


def _container_only(name: str, port: int, dsn: str) -> str:
    return config_for(name, port, dsn).replace("steps: [container, sql, verify]", "steps: [container]")


async def test_a_deploy_made_while_watchdogd_was_down_is_rolled_back_to_the_container_it_last_saw(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(_container_only(story.name, story.port, pg_dsn))
    wd.start()
    status, first = wd.post("/v1/deployments", {"service": "api", "image": APP_V1})
    assert status == 201, first
    assert wd.stop() == 0

    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))  # while watchdogd is down
    wd.start()

    def noticed() -> dict[str, Any] | None:
        _, body = wd.get("/v1/deployments")
        return next((d for d in body["items"] if d["image"] == APP_V2), None)

    deployment = wd.wait_for("the deploy made while down noticed at start", noticed, timeout=20)
    assert deployment["previous_image"] == APP_V1
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert done["deployment_id"] == deployment["id"]
    assert "v1" in story.running_image()
    assert wd.stop() == 0


async def test_a_restart_between_the_swap_and_the_rollback_loses_nothing(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    config = _container_only(story.name, story.port, pg_dsn).replace("for: 10s", "for: 15s")
    wd: Watchdogd = watchdogd(config)
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))

    def noticed() -> dict[str, Any] | None:
        _, body = wd.get("/v1/deployments")
        return next((d for d in body["items"] if d["image"] == APP_V2), None)

    deployment = wd.wait_for("the swap noticed from Docker", noticed, timeout=20)
    wd.kill()  # no clean shutdown: only the store remembers v1
    wd.start()
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert done["deployment_id"] == deployment["id"]
    assert "v1" in story.running_image()
    assert wd.stop() == 0
