"""The container step against the real Docker engine: v2 rolled back to v1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from requests.exceptions import ConnectionError as RequestsConnectionError

from tests.testbed.containers import AppContainer, ContainerRegistry, free_port, http_get
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import (
    ContainerStepConfig,
    HttpSource,
    RollbackConfig,
    ServiceConfig,
)
from watchdogd.rollback.base import ContainerSnapshot, RollbackTarget, StepResult
from watchdogd.rollback.container import ContainerStep, capture, failed_name
from watchdogd.sources.http import HttpProbe

pytestmark = pytest.mark.integration

DEPLOY = "d-42"
CUSTOM_COMMAND = ["/bin/sh", "-c", "echo started-by-custom-command; exec /app/start"]
RESTART = {"Name": "on-failure", "MaximumRetryCount": 3}
FAST = ContainerStepConfig(stop_timeout="5s", healthy_timeout="8s", settle="300ms")
STEP_LIMIT = 60.0
"""No step run in these tests may take longer than this."""


@dataclass
class Deployed:
    """A service as a deploy left it: v2 running under ``name``, v1's snapshot kept."""

    name: str
    port: int
    bad: Any  # the v2 container
    target: RollbackTarget

    @property
    def failed(self) -> str:
        return failed_name(self.name, DEPLOY)


async def _deploy(
    client: Any,
    registry: ContainerRegistry,
    data_dir: Path,
    *,
    previous_env: dict[str, str] | None = None,
    previous_command: list[str] | None = None,
    previous_healthcheck: dict[str, Any] | None = None,
    settings: ContainerStepConfig = FAST,
) -> Deployed:
    """Run v1 with a rich configuration, snapshot it, replace it by v2 with the same one."""
    name = registry.name("svc")
    port = free_port()
    (data_dir / "marker").write_text("kept across the rollback\n")
    common: dict[str, Any] = {
        "detach": True,
        "name": name,
        "network_mode": "host",
        "volumes": [f"{data_dir}:/data:ro"],
        "labels": {**registry.labels, "com.example.team": "payments"},
        "restart_policy": RESTART,
    }
    env = {"PORT": str(port), "FEATURE_FLAG": "on"}
    v1 = client.containers.run(
        APP_V1,
        command=previous_command or CUSTOM_COMMAND,
        environment={**env, **(previous_env or {})},
        healthcheck=previous_healthcheck,
        **common,
    )
    registry.track(v1)
    previous = await capture(client, name)
    v1.remove(force=True)
    v2 = registry.track(client.containers.run(APP_V2, command=CUSTOM_COMMAND, environment=env, **common))
    AppContainer(v2, port, APP_V2).wait_answering(20)
    current = await capture(client, name)
    config = ServiceConfig(container=name, rollback=RollbackConfig(container=settings))
    target = RollbackTarget(
        service="app", deployment_id=DEPLOY, config=config, previous=previous, current=current
    )
    return Deployed(name, port, v2, target)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _health_probe(session: aiohttp.ClientSession, port: int) -> Callable[[], Awaitable[bool]]:
    """The service's HTTP health probe as the step takes it."""
    source = HttpSource.model_validate(
        {"type": "http", "url": f"http://127.0.0.1:{port}/cgi-bin/health", "timeout": "1s"}
    )
    probe = HttpProbe("health", source, session)

    async def healthy() -> bool:
        return (await probe.probe())[2] is None

    return healthy


async def _run(step: ContainerStep, target: RollbackTarget) -> StepResult:
    async with asyncio.timeout(STEP_LIMIT):
        return await step.run(target)


def _attrs(client: Any, name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = client.api.inspect_container(name)
    return attrs


def _exists(client: Any, name: str) -> bool:
    return bool(client.containers.list(all=True, filters={"name": f"^/{name}$"}))


def _env(attrs: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in attrs["Config"]["Env"])


async def test_v2_to_v1_keeps_configuration_and_the_failed_container(
    docker_client: Any,
    container_registry: ContainerRegistry,
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)
    step = ContainerStep(docker_client, probe=_health_probe(session, d.port))

    result = await _run(step, d.target)

    assert result.status == "done", result.detail
    now = _attrs(docker_client, d.name)
    assert now["Image"] == docker_client.images.get(APP_V1).id
    assert now["State"]["Running"]
    env = _env(now)
    assert env["FEATURE_FLAG"] == "on"
    assert env["PORT"] == str(d.port)
    assert env["APP_VERSION"] == "v1", "v2's baked-in env must not leak into v1"
    assert now["Config"]["Cmd"] == CUSTOM_COMMAND
    assert now["Config"]["Labels"]["com.example.team"] == "payments"
    assert now["HostConfig"]["RestartPolicy"] == RESTART
    assert now["HostConfig"]["NetworkMode"] == "host"
    code, output = docker_client.containers.get(d.name).exec_run(["cat", "/data/marker"])
    assert (code, output.decode()) == (0, "kept across the rollback\n")
    assert http_get(f"http://127.0.0.1:{d.port}/cgi-bin/health") == (200, "ok")
    _, metrics = http_get(f"http://127.0.0.1:{d.port}/cgi-bin/metrics")
    assert 'app_info{version="v1"} 1' in metrics

    kept = _attrs(docker_client, d.failed)
    assert kept["Id"] == d.bad.id
    assert kept["Image"] == docker_client.images.get(APP_V2).id
    assert kept["State"]["Status"] == "exited"
    assert "app v2: stopping" in d.bad.logs().decode()
    assert result.data["config_from"] == "previous"


async def test_second_run_is_already_done(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)
    step = ContainerStep(docker_client)
    first = await _run(step, d.target)
    assert first.status == "done", first.detail
    running = _attrs(docker_client, d.name)

    second = await _run(step, d.target)

    assert second.status == "already_done", second.detail
    assert second.data["actions"] == []
    again = _attrs(docker_client, d.name)
    assert (again["Id"], again["State"]["StartedAt"]) == (running["Id"], running["State"]["StartedAt"])


async def test_without_previous_configuration_the_current_one_is_used(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path, previous_env={"ONLY_IN_V1": "1"})
    assert d.target.previous is not None
    image_only = replace(d.target.previous, config={})
    result = await _run(ContainerStep(docker_client), replace(d.target, previous=image_only))

    assert result.status == "done", result.detail
    assert result.data["config_from"] == "current"
    now = _attrs(docker_client, d.name)
    assert now["Image"] == docker_client.images.get(APP_V1).id
    env = _env(now)
    assert "ONLY_IN_V1" not in env
    assert (env["FEATURE_FLAG"], env["APP_VERSION"], env["ERROR_RATIO"]) == ("on", "v1", "0.005")
    assert now["Config"]["Cmd"] == CUSTOM_COMMAND


def _assert_restored(client: Any, d: Deployed, result: StepResult, *reason: str) -> None:
    assert result.status == "failed"
    assert "did not become healthy" in result.detail
    for part in reason:
        assert part in result.detail, result.detail
    now = _attrs(client, d.name)
    assert now["Id"] == d.bad.id
    assert now["State"]["Running"]
    assert not _exists(client, d.failed)
    v1_id = client.images.get(APP_V1).id
    assert [
        c for c in client.containers.list(all=True, filters={"ancestor": v1_id}) if c.name == d.name
    ] == []


async def test_unhealthy_previous_by_probe_puts_the_bad_one_back(
    docker_client: Any,
    container_registry: ContainerRegistry,
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path, previous_env={"UNHEALTHY": "1"})
    settings = ContainerStepConfig(stop_timeout="5s", healthy_timeout="2s", settle="300ms")
    step = ContainerStep(docker_client, probe=_health_probe(session, d.port), config=settings)

    result = await _run(step, d.target)

    _assert_restored(docker_client, d, result, "not healthy within 2s", "app v1 starting")
    AppContainer(d.bad, d.port, APP_V2).wait_health_status(200, timeout=10)


async def test_previous_command_that_exits_puts_the_bad_one_back(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    boom = ["/bin/sh", "-c", "echo cannot start: missing config; exit 3"]
    d = await _deploy(docker_client, container_registry, tmp_path, previous_command=boom)
    deployed_cmd = d.target.current.config["Config"]["Cmd"] if d.target.current else None

    result = await _run(ContainerStep(docker_client), d.target)

    _assert_restored(docker_client, d, result, "exited with code 3", "cannot start: missing config")
    assert _attrs(docker_client, d.name)["Config"]["Cmd"] == deployed_cmd


async def test_previous_failing_healthcheck_puts_the_bad_one_back(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    check = {"test": ["CMD", "false"], "interval": 200_000_000, "timeout": 1_000_000_000, "retries": 1}
    d = await _deploy(docker_client, container_registry, tmp_path, previous_healthcheck=check)

    result = await _run(ContainerStep(docker_client), d.target)

    _assert_restored(docker_client, d, result, "healthcheck is unhealthy")


async def test_missing_previous_image_fails_before_touching_anything(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)
    assert d.target.previous is not None
    gone = replace(d.target.previous, image="watchdogd-test/app:gone", image_id="sha256:" + "0" * 64)
    before = _attrs(docker_client, d.name)

    result = await _run(ContainerStep(docker_client), replace(d.target, previous=gone))

    assert result.status == "failed"
    assert "not available" in result.detail and "nothing touched" in result.detail
    after = _attrs(docker_client, d.name)
    assert after["Id"] == d.bad.id
    assert after["State"]["Running"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert not _exists(docker_client, d.failed)


async def test_resume_after_rename_before_create(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)
    d.bad.stop(timeout=5)
    d.bad.rename(d.failed)

    result = await _run(ContainerStep(docker_client), d.target)

    assert result.status == "done", result.detail
    assert [a.split(" ")[0] for a in result.data["actions"]] == ["created", "started"]
    assert _attrs(docker_client, d.name)["Image"] == docker_client.images.get(APP_V1).id
    assert _attrs(docker_client, d.failed)["Id"] == d.bad.id


async def test_resume_with_created_but_not_started_container(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)
    d.bad.stop(timeout=5)
    d.bad.rename(d.failed)
    assert d.target.previous is not None
    config = d.target.previous.config
    body = {**config["Config"], "Image": APP_V1, "HostConfig": config["HostConfig"]}
    half = docker_client.api.create_container_from_config(body, d.name)

    result = await _run(ContainerStep(docker_client), d.target)

    assert result.status == "done", result.detail
    assert result.data["actions"] == [f"started {d.name}"]
    now = _attrs(docker_client, d.name)
    assert now["Id"] == half["Id"]
    assert now["State"]["Running"]


async def test_both_bad_and_kept_containers_present_is_refused(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)
    stray = container_registry.track(
        docker_client.containers.create(APP_V2, name=d.failed, labels=container_registry.labels)
    )

    result = await _run(ContainerStep(docker_client), d.target)

    assert result.status == "failed"
    assert "refusing to guess" in result.detail
    assert _attrs(docker_client, d.name)["State"]["Running"]
    assert _attrs(docker_client, d.failed)["Id"] == stray.id


async def test_describe_lists_actions_and_changes_nothing(
    docker_client: Any, container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    d = await _deploy(docker_client, container_registry, tmp_path)

    lines = await ContainerStep(docker_client).describe(d.target)

    text = "\n".join(lines)
    assert f"stop {d.name} (SIGTERM, 5s before SIGKILL)" in text
    assert f"rename {d.name} to {d.failed}" in text
    assert f"create {d.name} from {APP_V1}" in text
    assert f"rename {d.failed} back to {d.name}" in text
    assert _attrs(docker_client, d.name)["Id"] == d.bad.id
    assert not _exists(docker_client, d.failed)

    assert (await ContainerStep(docker_client).run(d.target)).status == "done"
    after = await ContainerStep(docker_client).describe(d.target)
    assert after[0].startswith(f"{d.name} already runs {APP_V1}")
    assert not any(line.startswith(("stop ", "create ")) for line in after)


class _EngineDown:
    """A Docker client whose engine does not answer."""

    @property
    def api(self) -> _EngineDown:
        return self

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise RequestsConnectionError("Connection refused: /var/run/docker.sock")

        return call


async def test_engine_down_fails_with_reason() -> None:
    snapshot = ContainerSnapshot("svc", APP_V1, "sha256:" + "1" * 64, {"Config": {}, "HostConfig": {}})
    current = ContainerSnapshot("svc", APP_V2, "sha256:" + "2" * 64, {"Config": {}, "HostConfig": {}})
    target = RollbackTarget("app", DEPLOY, ServiceConfig(container="svc"), previous=snapshot, current=current)

    result = await ContainerStep(_EngineDown()).run(target)

    assert result.status == "failed"
    assert "Docker engine error" in result.detail and "Connection refused" in result.detail
    plan = await ContainerStep(_EngineDown()).describe(target)
    assert "Docker engine unreachable" in plan[0]
