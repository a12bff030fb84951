"""Recreating for real: the service never left down, the kept container, settings kept, namespaces by name."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from docker.types import Mount

from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.container import ContainerStep, capture, failed_name

pytestmark = pytest.mark.integration

DEPLOY = "d-7"
FAST = ContainerStepConfig(stop_timeout="5s", healthy_timeout="8s", settle="300ms")
IDLE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


async def _swap(
    client: Any,
    registry: ContainerRegistry,
    name: str,
    previous: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[RollbackTarget, Any]:
    """v1 under ``name`` with ``options`` (and ``previous``), snapshotted, replaced by v2 with ``options``."""
    base = {"detach": True, "name": name, "labels": registry.labels, **options}
    base.setdefault("network_mode", "host")
    base.setdefault("command", IDLE)
    v1 = registry.track(client.containers.run(APP_V1, **{**base, **(previous or {})}))
    previous = await capture(client, name)
    v1.remove(force=True)
    v2 = registry.track(client.containers.run(APP_V2, **base))
    current = await capture(client, name)
    config = ServiceConfig(container=name, rollback=RollbackConfig(container=FAST))
    return RollbackTarget("app", DEPLOY, config, previous=previous, current=current), v2


async def _run(client: Any, target: RollbackTarget) -> StepResult:
    async with asyncio.timeout(60):
        return await ContainerStep(client).run(target)


def _containers_named(client: Any, prefix: str) -> list[str]:
    return sorted(c.name for c in client.containers.list(all=True, filters={"name": prefix}))


async def test_a_device_gone_puts_the_bad_container_back_running(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path, app_images: dict[str, str]
) -> None:
    device = tmp_path / "wdtest-null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    name = container_registry.name("dev")
    target, v2 = await _swap(
        docker_client, container_registry, name, previous={"devices": [f"{device}:/dev/wdtest:rwm"]}
    )
    device.unlink()

    result = await _run(docker_client, target)

    assert result.status == "failed"
    assert "put back" in result.detail or "back and running" in result.detail, result.detail
    attrs = docker_client.api.inspect_container(name)
    assert attrs["Id"] == v2.id and attrs["State"]["Running"]
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"  # as deployed: no policy
    assert _containers_named(docker_client, name) == [name]


async def test_a_mount_source_gone_puts_the_bad_container_back_with_its_restart_policy(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path, app_images: dict[str, str]
) -> None:
    source = tmp_path / "data"
    source.mkdir()
    name = container_registry.name("mnt")
    target, v2 = await _swap(
        docker_client,
        container_registry,
        name,
        previous={"mounts": [Mount("/data", str(source), type="bind", read_only=True)]},
        restart_policy={"Name": "always"},
    )
    source.rmdir()

    result = await _run(docker_client, target)

    assert result.status == "failed", result.detail
    attrs = docker_client.api.inspect_container(name)
    assert attrs["Id"] == v2.id and attrs["State"]["Running"]
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert _containers_named(docker_client, name) == [name]


async def test_a_namespace_provider_recreated_is_joined_by_name(
    docker_client: Any, container_registry: ContainerRegistry, app_images: dict[str, str]
) -> None:
    provider = container_registry.name("net")
    run = {"detach": True, "name": provider, "labels": container_registry.labels, "network_mode": "host"}
    container_registry.track(docker_client.containers.run(APP_V1, command=IDLE, **run))
    name = container_registry.name("joined")
    target, _ = await _swap(docker_client, container_registry, name, network_mode=f"container:{provider}")
    docker_client.containers.get(provider).remove(force=True)
    renewed = container_registry.track(docker_client.containers.run(APP_V1, command=IDLE, **run))

    result = await _run(docker_client, target)

    assert result.status == "done", result.detail
    attrs = docker_client.api.inspect_container(name)
    assert attrs["State"]["Running"]
    assert attrs["HostConfig"]["NetworkMode"] == f"container:{renewed.id}"
    assert target.previous is not None
    assert target.previous.config["HostConfig"]["NetworkMode"] == f"container:{provider}"


async def test_the_kept_container_never_restarts_and_an_auto_removed_one_is_kept(
    docker_client: Any, container_registry: ContainerRegistry, app_images: dict[str, str]
) -> None:
    name = container_registry.name("auto")
    target, v2 = await _swap(docker_client, container_registry, name, auto_remove=True)

    result = await _run(docker_client, target)

    assert result.status == "done", result.detail
    kept = docker_client.api.inspect_container(failed_name(name, DEPLOY))
    assert not kept["State"]["Running"]
    assert kept["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert kept["HostConfig"]["AutoRemove"] is False
    assert kept["Config"]["Env"] == v2.attrs["Config"]["Env"]
    live = docker_client.api.inspect_container(name)
    assert live["Image"] == docker_client.api.inspect_image(APP_V1)["Id"]
    assert live["HostConfig"]["AutoRemove"] is True


async def test_the_kept_container_has_restart_policy_no(
    docker_client: Any, container_registry: ContainerRegistry, app_images: dict[str, str]
) -> None:
    name = container_registry.name("always")
    target, _ = await _swap(docker_client, container_registry, name, restart_policy={"Name": "always"})

    result = await _run(docker_client, target)

    assert result.status == "done", result.detail
    kept = docker_client.api.inspect_container(failed_name(name, DEPLOY))
    assert kept["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert docker_client.api.inspect_container(name)["HostConfig"]["RestartPolicy"]["Name"] == "always"
