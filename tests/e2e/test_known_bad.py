"""A redeploy of an image that was just rolled back is known bad: noticed from Docker, marked, acted on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import VIEWER_TOKEN, Watchdogd
from tests.e2e.test_daemon import Story, config_for, first_rollback_in, rollbacks
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import APP_V2, AppBehaviour

pytestmark = pytest.mark.integration


def _config(story: Story, dsn: str, on_known_bad: str) -> str:
    return (
        config_for(story.name, story.port, dsn)
        .replace("steps: [container, sql, verify]", "steps: [container]")
        .replace("    container: ", f"    on_known_bad: {on_known_bad}\n    container: ", 1)
    )


async def _bad_deploy_rolled_back(wd: Watchdogd, story: Story) -> dict[str, Any]:
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert "v1" in story.running_image()
    return done


def _redeploy_v2_healthy(story: Story) -> None:
    """The same v2 image again, answering well this time: only its history says it is bad."""
    story.registry.client.containers.get(story.name).remove(force=True)
    story.registry.run_app("v2", AppBehaviour(error_ratio=0.0, log_line=""), name=story.name, port=story.port)


def _audited(wd: Watchdogd, deployment_id: str) -> list[dict[str, Any]]:
    status, audit = wd.get(f"/v1/audit?deployment={deployment_id}", token=VIEWER_TOKEN)
    assert status == 200, audit
    return list(audit["items"])


def _redeployment(wd: Watchdogd, first: str) -> Any:
    def found() -> dict[str, Any] | None:
        _, body = wd.get("/v1/deployments")
        return next((d for d in body["items"] if d["image"] == APP_V2 and d["id"] != first), None)

    return wd.wait_for("the redeploy noticed from Docker", found, timeout=20)


async def test_a_known_bad_image_redeployed_is_rolled_back_at_once_with_the_reason(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(_config(story, pg_dsn, "rollback"))
    wd.start()
    first = await _bad_deploy_rolled_back(wd, story)

    _redeploy_v2_healthy(story)
    again = _redeployment(wd, first["deployment_id"])

    def second() -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rollbacks(wd)
                if r["deployment_id"] == again["id"] and r["state"] in ("succeeded", "failed")
            ),
            None,
        )

    done = wd.wait_for("the known-bad redeploy rolled back", second, timeout=30)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    reason = done["reasons"][0]["reason"]
    assert reason.startswith(f"image {APP_V2} (sha256:") and "was rolled back at" in reason, reason
    assert first["deployment_id"] in reason
    assert "v1" in story.running_image()
    marked = [e for e in _audited(wd, again["id"]) if e["action"] == "known_bad_image"]
    assert len(marked) == 1 and marked[0]["detail"]["rolled_back_deployment"] == first["deployment_id"]
    assert wd.stop() == 0


async def test_a_known_bad_image_redeployed_is_notified_and_marked_but_left_running_with_notify(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(_config(story, pg_dsn, "notify"))
    wd.start()
    first = await _bad_deploy_rolled_back(wd, story)

    _redeploy_v2_healthy(story)
    again = _redeployment(wd, first["deployment_id"])

    marked = wd.wait_for(
        "the known-bad mark",
        lambda: [e for e in _audited(wd, again["id"]) if e["action"] == "known_bad_image"],
        timeout=10,
    )
    assert marked[0]["detail"]["on_known_bad"] == "notify"
    status, shown = wd.get(f"/v1/deployments/{again['id']}")
    assert status == 200 and shown["known_bad"]["rolled_back_deployment"] == first["deployment_id"], shown
    assert "was rolled back at" in marked[0]["detail"]["reason"]
    assert [r for r in rollbacks(wd) if r["deployment_id"] == again["id"]] == []
    assert "v2" in story.running_image()
    assert wd.stop() == 0
