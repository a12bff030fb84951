"""A previous image deleted from the host is pulled back by the digest recorded when it ran.

A real registry (Debian's ``docker-registry``) listens on 127.0.0.1: the engine
pushes the v1 image there, runs it, and after the deploy the image is deleted
from the host (what ``docker system prune -a`` does, holder and all).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import APIError, ImageNotFound

from tests.testbed.containers import AppContainer, ContainerRegistry, free_port
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.container import ContainerStep, capture

pytestmark = pytest.mark.integration

FAST = {"stop_timeout": "5s", "healthy_timeout": "8s", "settle": "300ms"}


@pytest.fixture
def image_registry(tmp_path: Path) -> Iterator[str]:
    """A registry on 127.0.0.1 (the engine takes plain HTTP from loopback); its ``host:port``."""
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is missing: run scripts/testbed.sh"
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'blobs'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"registry did not start: {proc.stderr.read() if proc.stderr else ''!r}"
                    ) from exc
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_a_deleted_previous_image_is_pulled_back_by_its_recorded_digest(
    docker_client: Any, app_images: dict[str, str], container_registry: ContainerRegistry, image_registry: str
) -> None:
    repository = f"{image_registry}/wdtest-{container_registry.run_id}/app"
    made = docker_client.containers.create(APP_V1)
    try:
        v1 = str(made.commit(repository=repository, tag="v1").id)  # an image of this test's own
    finally:
        made.remove(force=True)
    name, port = container_registry.name("svc"), free_port()
    try:
        for line in docker_client.api.push(repository, tag="v1", stream=True, decode=True):
            assert "error" not in line, line
        old = container_registry.track(
            docker_client.containers.run(
                f"{repository}:v1", detach=True, name=name, network_mode="host",
                environment={"PORT": str(port)}, labels=container_registry.labels,
            )
        )  # fmt: skip
        AppContainer(old, port, f"{repository}:v1").wait_answering(20)
        previous = await capture(docker_client, name)
        assert previous.image_id == v1
        assert previous.digests and previous.digests[0].startswith(f"{repository}@sha256:")

        old.remove(force=True)  # the deploy
        container_registry.track(
            docker_client.containers.run(
                APP_V2, detach=True, name=name, network_mode="host",
                environment={"PORT": str(port)}, labels=container_registry.labels,
            )
        )  # fmt: skip
        current = await capture(docker_client, name)
        docker_client.images.remove(v1, force=True)  # pruned, holder and all
        with pytest.raises(ImageNotFound):
            docker_client.images.get(v1)

        settings = ContainerStepConfig(**FAST, pull=True)
        config = ServiceConfig(
            container=name, images=(repository,), rollback=RollbackConfig(container=settings)
        )
        target = RollbackTarget("app", "d-pull", config, previous=previous, current=current)
        async with asyncio.timeout(60):
            result = await ContainerStep(docker_client).run(target)

        assert result.status == "done", result.detail
        assert any(a.startswith(f"pulled {repository}@sha256:") for a in result.data["actions"]), result.data
        assert docker_client.api.inspect_container(name)["Image"] == v1
    finally:
        container_registry.cleanup()
        with contextlib.suppress(ImageNotFound, APIError):
            docker_client.images.remove(v1, force=True)
