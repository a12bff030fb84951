"""A Compose service rolled back for real: Debian's docker-compose, every replica, the project left clean."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ComposeTarget, ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.container import ContainerStep, capture_target
from watchdogd.rollback.targets import ComposeService, failed_name

pytestmark = pytest.mark.integration

DEPLOY = "d-compose"
FAST = ContainerStepConfig(stop_timeout="5s", healthy_timeout="10s", settle="300ms")
COMPOSE_FILE = """\
version: "2.4"
services:
  api:
    image: "watchdogd-test/app:${TAG}"
    network_mode: host
    command: ["/bin/sh", "-c", "echo running $$APP_VERSION; trap 'exit 0' TERM; while true; do sleep 1; done"]
    stop_grace_period: 3s
    restart: always
    labels:
      org.watchdogd-test.testbed: "1"
"""


class Project:
    """One Compose project in a temporary directory, driven by the real ``docker-compose``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        (directory / "docker-compose.yml").write_text(COMPOSE_FILE)

    def compose(self, tag: str, *args: str) -> str:
        env = {**os.environ, "TAG": tag}
        done = subprocess.run(
            ["docker-compose", "-p", self.name, *args],
            cwd=self.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def up(self, tag: str, scale: int = 3) -> None:
        self.compose(tag, "up", "-d", "--scale", f"api={scale}")

    def ps_ids(self, tag: str) -> list[str]:
        return self.compose(tag, "ps", "-q", "api").split()

    def down(self) -> None:
        subprocess.run(
            ["docker-compose", "-p", self.name, "down", "-t", "1"],
            cwd=self.directory,
            env={**os.environ, "TAG": "v1"},
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def project(tmp_path: Path, container_registry: ContainerRegistry, app_images: dict[str, str]) -> Any:
    p = Project(tmp_path, container_registry.name("cmp").replace("-", ""))
    yield p
    p.down()
    client = container_registry.client
    for c in client.containers.list(all=True, filters={"name": p.name}):
        c.remove(force=True)


async def _deployed(client: Any, project: Project, scale: int = 3) -> RollbackTarget:
    where = ComposeService(project.name, "api")
    project.up("v1", scale)
    previous = await capture_target(client, where)
    project.up("v2", scale)
    current = await capture_target(client, where)
    assert previous is not None and current is not None
    config = ServiceConfig(
        compose=ComposeTarget(project=project.name, service="api"), rollback=RollbackConfig(container=FAST)
    )
    return RollbackTarget("api", DEPLOY, config, previous=previous, current=current)


async def _run(client: Any, target: RollbackTarget) -> StepResult:
    async with asyncio.timeout(120):
        return await ContainerStep(client).run(target)


def _image(client: Any, ref: str) -> str:
    return str(client.api.inspect_image(ref)["Id"])


async def test_every_replica_rolls_back_and_the_kept_ones_leave_the_project(
    docker_client: Any, project: Project
) -> None:
    target = await _deployed(docker_client, project)
    v1, v2 = _image(docker_client, APP_V1), _image(docker_client, APP_V2)

    result = await _run(docker_client, target)

    assert result.status == "done", result.detail
    names = [f"{project.name}_api_{n}" for n in (1, 2, 3)]
    for name in names:
        attrs = docker_client.api.inspect_container(name)
        assert attrs["Image"] == v1 and attrs["State"]["Running"], name
        kept = docker_client.api.inspect_container(failed_name(name, DEPLOY))
        assert kept["Image"] != v1 and not kept["State"]["Running"]
        assert kept["HostConfig"]["RestartPolicy"]["Name"] == "no"
        assert kept["Config"]["Labels"]["com.docker.compose.project"] == ""
        assert kept["Config"]["Labels"]["org.watchdogd.kept.com.docker.compose.project"] == project.name
    listed = project.ps_ids("v1")
    assert sorted(docker_client.api.inspect_container(i)["Name"].lstrip("/") for i in listed) == names
    assert all(docker_client.api.inspect_container(i)["Image"] == v1 for i in listed)
    # The compose file at v1 again: nothing to recreate, the rolled-back containers are what it describes.
    project.up("v1")
    assert sorted(project.ps_ids("v1")) == sorted(listed)
    # The compose file unchanged at v2: the bad image comes back as a new deploy, the kept ones untouched.
    project.up("v2")
    again = project.ps_ids("v2")
    assert len(again) == 3 and all(docker_client.api.inspect_container(i)["Image"] == v2 for i in again)
    for name in names:
        assert not docker_client.api.inspect_container(failed_name(name, DEPLOY))["State"]["Running"]


async def test_a_second_run_is_already_done(docker_client: Any, project: Project) -> None:
    target = await _deployed(docker_client, project, scale=2)
    assert (await _run(docker_client, target)).status == "done"

    result = await _run(docker_client, target)

    assert result.status == "already_done", result.detail


async def test_a_scaled_up_deploy_keeps_the_extra_replicas_out_of_the_project(
    docker_client: Any, project: Project
) -> None:
    where = ComposeService(project.name, "api")
    project.up("v1", 1)
    previous = await capture_target(docker_client, where)
    project.up("v2", 3)
    current = await capture_target(docker_client, where)
    config = ServiceConfig(
        compose=ComposeTarget(project=project.name, service="api"), rollback=RollbackConfig(container=FAST)
    )
    target = RollbackTarget("api", DEPLOY, config, previous=previous, current=current)

    result = await _run(docker_client, target)

    assert result.status == "done", result.detail
    listed = project.ps_ids("v1")
    assert [docker_client.api.inspect_container(i)["Name"].lstrip("/") for i in listed] == [
        f"{project.name}_api_1"
    ]
    for n in (2, 3):
        kept = docker_client.api.inspect_container(failed_name(f"{project.name}_api_{n}", DEPLOY))
        assert not kept["State"]["Running"]


async def test_the_bad_replicas_stop_with_the_compose_grace_period(
    docker_client: Any, project: Project
) -> None:
    target = await _deployed(docker_client, project, scale=1)
    bad = docker_client.api.inspect_container(f"{project.name}_api_1")

    result = await _run(docker_client, target)

    assert result.status == "done", result.detail
    assert bad["Config"].get("StopTimeout") == 3
    assert "stopped" in " ".join(result.data["actions"])
