"""The previous image stays on the host while a rollback to it may be needed: prune cannot delete it.

The deploy is built like ``docker compose build``: the new image takes the
tag, the previous one is left untagged (dangling), which ``docker image prune``
deletes; the test prunes with ``-a`` semantics (unused images, tagged or not),
limited to its own images by a label so that nothing else on the host is touched.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from docker.errors import APIError, ImageNotFound

from tests.e2e.conftest import Watchdogd
from tests.e2e.test_daemon import Story, config_for, first_rollback_in
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import APP_V1, APP_V2, AppBehaviour
from watchdogd.rollback.holds import DEPLOYMENT_LABEL

pytestmark = pytest.mark.integration

PRUNE_LABEL = "wdtest.prune"


def _build(client: Any, base: str, tag: str, run_id: str) -> str:
    """A new image with ``base``'s files and settings under ``tag`` (its own ID, labelled for prune)."""
    made = client.containers.create(base)
    try:
        image = made.commit(
            repository=tag.rsplit(":", 1)[0], tag="latest", changes=[f"LABEL {PRUNE_LABEL}={run_id}"]
        )
    finally:
        made.remove(force=True)
    return str(image.id)


def _holders(client: Any, deployment_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment_id}"}))


async def test_a_prune_mid_window_cannot_delete_the_previous_image_and_the_hold_ends_with_the_rollback(
    watchdogd: Any, app_images: Any, docker_client: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    run_id = container_registry.run_id
    tag = f"wdtest-{run_id}/app:latest"
    story = Story(container_registry, pg_dsn)
    v1 = _build(docker_client, APP_V1, tag, run_id)
    v2 = ""
    deployment: dict[str, Any] = {}
    try:
        container_registry.run_app(tag, AppBehaviour(error_ratio=0.0), name=story.name, port=story.port)
        config = config_for(story.name, story.port, pg_dsn).replace(
            "steps: [container, sql, verify]", "steps: [container]"
        )
        wd: Watchdogd = watchdogd(config)
        wd.start()

        v2 = _build(docker_client, APP_V2, tag, run_id)  # the tag moves: v1 is dangling now
        assert docker_client.images.get(v1).tags == []
        docker_client.containers.get(story.name).remove(force=True)
        container_registry.run_app(
            tag, AppBehaviour(error_ratio=0.2, log_line=""), name=story.name, port=story.port
        )

        def noticed() -> dict[str, Any] | None:
            _, body = wd.get("/v1/deployments")
            return next((d for d in body["items"] if d["service"] == "api"), None)

        deployment = wd.wait_for("the deploy noticed from Docker", noticed, timeout=20)
        # the holder is made just after the deployment is stored: the API may show it a moment earlier
        held = deployment["id"]
        wd.wait_for("the previous image held", lambda: len(_holders(docker_client, held)) == 1, timeout=20)
        pruned = docker_client.images.prune(filters={"dangling": False, "label": f"{PRUNE_LABEL}={run_id}"})
        deleted = [d.get("Deleted") for d in pruned.get("ImagesDeleted") or ()]
        assert v1 not in deleted
        assert docker_client.images.get(v1).id == v1

        done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)
        assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
        assert docker_client.containers.get(story.name).image.id == v1
        wd.wait_for(
            "the previous image released after the rollback",
            lambda: not _holders(docker_client, deployment["id"]),
            timeout=40,
        )
        assert (
            docker_client.images.get(v1).id == v1
        )  # released, not deleted: the rolled back container uses it
        assert wd.stop() == 0
    finally:
        if deployment:
            for holder in _holders(docker_client, deployment["id"]):
                holder.remove(force=True)
        container_registry.cleanup()
        for image in (v2, v1):
            with contextlib.suppress(ImageNotFound, APIError):
                if image:
                    docker_client.images.remove(image, force=True)
