"""The image a rollback starts comes from what ran, against the real Docker engine.

A request's ``previous_image`` is only a name: the container step starts an
image watchdogd saw running for the service (pinned to its image ID), or one
the service's ``images`` allow-list names, and pulls only from a repository
that list names.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.containers import AppContainer, ContainerRegistry, free_port
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.daemon import Daemon
from watchdogd.errors import Invalid
from watchdogd.model import ContainerSnapshot
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.container import ContainerStep, capture
from watchdogd.store import open_store
from watchdogd.testing import config_of
from watchdogd.watch.deployments import Registration
from watchdogd.watch.execution import rollback_target

pytestmark = pytest.mark.integration

DEPLOY = "d-img"
FAST = {"stop_timeout": "5s", "healthy_timeout": "8s", "settle": "300ms"}
EVIL = "127.0.0.1:1/evil/x:v1"
"""A registry nobody named, on a port where nothing listens: a pull attempt fails at once, locally."""


class RecordingApi:
    """The engine's API client, noting every pull asked of it."""

    def __init__(self, client: Any) -> None:
        self._api = client.api
        self.pulls: list[str] = []

    def pull(self, ref: str, *args: Any, **kwargs: Any) -> Any:
        self.pulls.append(ref)
        return self._api.pull(ref, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


def _config(name: str, images: list[str], pull: bool = False) -> str:
    return f"""
defaults: {{interval: 1s, window: 1h, grace: 1h}}
services:
  app:
    container: {name}
    images: {images}
    rollback:
      steps: [container]
      container: {{stop_timeout: 5s, healthy_timeout: 8s, settle: 300ms, pull: {str(pull).lower()}}}
"""


async def _open(config: str, url: str, docker_client: Any) -> Daemon:
    return await Daemon.open(
        config_of(config), store=await open_store(url), docker=docker_client, polling=False
    )


def _run_app(client: Any, registry: ContainerRegistry, image: str, name: str, port: int) -> Any:
    container = registry.track(
        client.containers.run(
            image,
            detach=True,
            name=name,
            network_mode="host",
            environment={"PORT": str(port)},
            labels=registry.labels,
        )
    )
    AppContainer(container, port, image).wait_answering(20)
    return container


async def _step(step: ContainerStep, target: RollbackTarget) -> StepResult:
    async with asyncio.timeout(60):
        return await step.run(target)


@pytest.fixture
def moving_tag(docker_client: Any, app_images: dict[str, str]) -> Iterator[str]:
    """A tag of this test's own, first on v1's image; removed (untagged) afterwards."""
    repository = f"watchdogd-test/moved-{secrets.token_hex(3)}"
    docker_client.images.get(APP_V1).tag(repository, "v1")
    yield f"{repository}:v1"
    docker_client.images.remove(f"{repository}:v1")


async def test_a_request_previous_image_never_run_and_not_allowed_is_refused(
    docker_client: Any, app_images: dict[str, str], container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    """watchdogd never saw v1 run for the service: naming it is refused, and v2 is left running."""
    name, port = container_registry.name("svc"), free_port()
    bad = _run_app(docker_client, container_registry, APP_V2, name, port)
    daemon = await _open(_config(name, []), f"sqlite:///{tmp_path / 'state.db'}", docker_client)
    try:
        for named in (APP_V1, EVIL):
            with pytest.raises(Invalid) as refused:
                await daemon.deployments.register(Registration("app", APP_V2, named), "ci")
            assert refused.value.code == "previous_image_not_allowed"
        assert await daemon.store.deployments() == []
    finally:
        await daemon.close(5)
    now = docker_client.api.inspect_container(name)
    assert (now["Id"], now["State"]["Running"]) == (bad.id, True)


async def test_the_step_never_starts_a_name_only_image_the_list_does_not_allow(
    docker_client: Any, app_images: dict[str, str], container_registry: ContainerRegistry
) -> None:
    """A plan journaled with a name alone (before this check existed) still does not start it."""
    name, port = container_registry.name("svc"), free_port()
    bad = _run_app(docker_client, container_registry, APP_V2, name, port)
    before = docker_client.api.inspect_container(name)
    current = await capture(docker_client, name)
    config = ServiceConfig(container=name, rollback=RollbackConfig(container=ContainerStepConfig(**FAST)))
    target = RollbackTarget(
        "app", DEPLOY, config, previous=ContainerSnapshot(name, APP_V1, "", {}), current=current
    )

    result = await _step(ContainerStep(docker_client), target)

    assert result.status == "failed"
    assert "does not allow it" in result.detail and "nothing touched" in result.detail
    after = docker_client.api.inspect_container(name)
    assert (after["Id"], after["State"]["StartedAt"]) == (bad.id, before["State"]["StartedAt"])
    v1_id = docker_client.images.get(APP_V1).id
    assert docker_client.containers.list(all=True, filters={"ancestor": v1_id, "name": name}) == []


async def test_an_allowed_previous_image_rolls_back(
    docker_client: Any, app_images: dict[str, str], container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    name, port = container_registry.name("svc"), free_port()
    _run_app(docker_client, container_registry, APP_V2, name, port)
    daemon = await _open(
        _config(name, ["watchdogd-test/app"]), f"sqlite:///{tmp_path / 'state.db'}", docker_client
    )
    try:
        deployment, _ = await daemon.deployments.register(Registration("app", APP_V2, APP_V1), "ci")
        svc = daemon.config.services["app"]
    finally:
        await daemon.close(5)

    result = await _step(ContainerStep(docker_client), rollback_target(deployment, (), svc))

    assert result.status == "done", result.detail
    assert docker_client.api.inspect_container(name)["Image"] == docker_client.images.get(APP_V1).id


@pytest.mark.parametrize(
    ("previous", "why"),
    [
        pytest.param(ContainerSnapshot("-", EVIL, "", {}), "does not allow it", id="name-only"),
        pytest.param(
            ContainerSnapshot(
                "-", EVIL, "sha256:" + "0" * 64, {}, ("127.0.0.1:1/evil/x@sha256:" + "0" * 64,)
            ),
            "not pulled from a registry the config does not name",
            id="recorded-but-gone",
        ),
    ],
)
async def test_a_registry_the_config_does_not_name_is_never_pulled_from(
    docker_client: Any,
    app_images: dict[str, str],
    container_registry: ContainerRegistry,
    previous: ContainerSnapshot,
    why: str,
) -> None:
    name, port = container_registry.name("svc"), free_port()
    bad = _run_app(docker_client, container_registry, APP_V2, name, port)
    current = await capture(docker_client, name)
    settings = ContainerStepConfig(**FAST, pull=True)
    config = ServiceConfig(
        container=name, images=("watchdogd-test/app",), rollback=RollbackConfig(container=settings)
    )
    api = RecordingApi(docker_client)
    target = RollbackTarget("app", DEPLOY, config, previous=previous, current=current)

    result = await _step(ContainerStep(api), target)
    plan = await ContainerStep(api).describe(target)

    assert api.pulls == []
    assert result.status == "failed" and why in result.detail, result.detail
    assert "nothing touched" in result.detail
    assert not any(line.startswith("pull ") for line in plan), plan
    now = docker_client.api.inspect_container(name)
    assert (now["Id"], now["State"]["Running"]) == (bad.id, True)


async def test_a_named_registry_is_pulled_from_and_a_failed_pull_leaves_the_service_running(
    docker_client: Any, app_images: dict[str, str], container_registry: ContainerRegistry
) -> None:
    """The same unreachable registry, named in images: the pull is tried (and fails, locally)."""
    name, port = container_registry.name("svc"), free_port()
    bad = _run_app(docker_client, container_registry, APP_V2, name, port)
    current = await capture(docker_client, name)
    settings = ContainerStepConfig(**FAST, pull=True)
    config = ServiceConfig(
        container=name, images=("127.0.0.1:1/evil/x",), rollback=RollbackConfig(container=settings)
    )
    api = RecordingApi(docker_client)
    target = RollbackTarget(
        "app", DEPLOY, config, previous=ContainerSnapshot(name, EVIL, "", {}), current=current
    )

    result = await _step(ContainerStep(api), target)

    assert api.pulls == [EVIL]
    assert result.status == "failed" and "pulling previous image" in result.detail, result.detail
    now = docker_client.api.inspect_container(name)
    assert (now["Id"], now["State"]["Running"]) == (bad.id, True)


async def test_a_moved_tag_rolls_back_to_the_image_that_ran(
    docker_client: Any,
    app_images: dict[str, str],
    container_registry: ContainerRegistry,
    moving_tag: str,
    tmp_path: Path,
) -> None:
    """watchdogd saw the tag run as v1, was down while v2 replaced it, and the tag now names v2's
    bytes: the request names the tag, the rollback starts the image ID that ran."""
    name, port = container_registry.name("svc"), free_port()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = _config(name, [])
    v1_id = docker_client.images.get(APP_V1).id
    old = _run_app(docker_client, container_registry, moving_tag, name, port)
    first = await _open(config, url, docker_client)
    try:
        seen, _ = await first.deployments.register(Registration("app", moving_tag), "ci")
        assert seen.facts.current is not None and seen.facts.current.image_id == v1_id
        assert seen.facts.current.digests == ()  # an imported image has no registry digest
    finally:
        await first.close(5)

    old.remove(force=True)  # the deploy, while watchdogd is down
    _run_app(docker_client, container_registry, APP_V2, name, port)
    repository, tag = moving_tag.rsplit(":", 1)
    docker_client.images.get(APP_V2).tag(repository, tag)
    assert docker_client.images.get(moving_tag).id != v1_id

    again = await _open(config, url, docker_client)
    try:
        deployment, _ = await again.deployments.register(Registration("app", APP_V2, moving_tag), "ci")
        svc = again.config.services["app"]
    finally:
        await again.close(5)
    assert deployment.facts.previous is not None
    assert deployment.facts.previous.image_id == v1_id

    result = await _step(ContainerStep(docker_client), rollback_target(deployment, (), svc))

    assert result.status == "done", result.detail
    assert docker_client.api.inspect_container(name)["Image"] == v1_id
