"""Which previous image a rollback may start: one this host ran for the service, or one its
``images`` allow-list names. Patterns, the config key, and registration, in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdogd.api import create_app
from watchdogd.auth import Tokens
from watchdogd.config.models import ServiceConfig
from watchdogd.daemon import Daemon
from watchdogd.errors import Invalid
from watchdogd.imageref import allowed, parse, parse_pattern, same_image_name
from watchdogd.model import ContainerSnapshot, DeploymentFacts
from watchdogd.store import Store
from watchdogd.testing import FakeClock, NoDocker, config_of, memory_store
from watchdogd.watch.deployments import Registration

ALLOW = ("registry.example.com/team/api",)


@pytest.mark.parametrize(
    ("ref", "patterns", "expected"),
    [
        # a repository pattern: any tag or digest of exactly that repository
        ("registry.example.com/team/api:v1", ALLOW, True),
        ("registry.example.com/team/api", ALLOW, True),
        ("registry.example.com/team/api@sha256:" + "a" * 64, ALLOW, True),
        ("registry.example.com/team/api-evil:v1", ALLOW, False),
        ("registry.example.com/team/apix:v1", ALLOW, False),
        ("registry.example.com/team/api/sub:v1", ALLOW, False),
        ("registry.example.com/team:v1", ALLOW, False),
        ("registry.example.com.evil.io/team/api:v1", ALLOW, False),
        ("evil.io/registry.example.com/team/api:v1", ALLOW, False),
        ("registry.example.com:5000/team/api:v1", ALLOW, False),
        ("REGISTRY.example.com/team/api:v1", ALLOW, True),  # host names are case-insensitive
        ("team/api:v1", ALLOW, False),  # Docker Hub, another registry
        # Docker Hub names are normalized on both sides
        ("api:v1", ("api",), True),
        ("docker.io/library/api:v1", ("api",), True),
        ("index.docker.io/library/api", ("library/api",), True),
        ("api-evil:v1", ("api",), False),
        ("evil/api:v1", ("api",), False),
        ("localhost/api:v1", ("api",), False),
        ("127.0.0.1:1/evil/x:v1", ("api", "watchdogd-test/app"), False),
        # tags and globs
        ("registry.example.com/team/api:v1.4", ("registry.example.com/team/api:v1.*",), True),
        ("registry.example.com/team/api:v2.0", ("registry.example.com/team/api:v1.*",), False),
        ("registry.example.com/team/api", ("registry.example.com/team/api:latest",), True),
        ("registry.example.com/team/api@sha256:" + "a" * 64, ("registry.example.com/team/api:v1",), False),
        ("registry.example.com/team/web:v1", ("registry.example.com/team/*",), True),
        ("registry.example.com/team/a/b:v1", ("registry.example.com/team/*",), False),
        ("registry.example.com/other/web:v1", ("registry.example.com/team/*",), False),
        ("registry.example.com/team/api-v2:1", ("registry.example.com/team/api-v?",), True),
        # digests
        ("r.example.com/x@sha256:" + "b" * 64, ("r.example.com/x@sha256:" + "b" * 64,), True),
        ("r.example.com/x@sha256:" + "c" * 64, ("r.example.com/x@sha256:" + "b" * 64,), False),
        # an image ID names no repository
        ("sha256:" + "d" * 64, ("api",), False),
        ("Upper/Case:v1", ("upper/case",), False),
    ],
)
def test_allow_list_matching(ref: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert (allowed(ref, patterns) is not None) is expected


@pytest.mark.parametrize(
    "pattern",
    ["*.example.com/api", "registry.example.com*/api", "sha256:" + "e" * 64, "Team/API", "", "api:"],
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(pattern)


def test_references_are_normalized() -> None:
    assert str(parse("api")) == "docker.io/library/api:latest"
    assert str(parse("127.0.0.1:1/evil/x")) == "127.0.0.1:1/evil/x:latest"
    assert parse("sha256:" + "f" * 64) is None
    assert same_image_name("app:v1", "docker.io/library/app:v1")
    assert not same_image_name("app:v1", "app:v2")


def test_config_takes_images_and_names_a_bad_one() -> None:
    svc = ServiceConfig.model_validate({"container": "api", "images": ["registry.example.com/team/api"]})
    assert svc.images == ("registry.example.com/team/api",)
    with pytest.raises(ValueError, match="no wildcards in a registry"):
        ServiceConfig.model_validate({"container": "api", "images": ["*.example.com/api"]})


# --- registration ------------------------------------------------------------------------------------

CONFIG = """
defaults: {interval: 1s, grace: 60s, window: 1h}
services:
  api:
    container: api
    images: [registry.example.com/team/api]
    rollback: {steps: [container]}
  web:
    container: web
    rollback: {steps: [container]}
  hook:
    rollback: {steps: [verify]}
"""
RECORDED = ContainerSnapshot(
    "api",
    "registry.other.io/team/api:v1",
    "sha256:" + "1" * 64,
    {"Config": {"Env": ["FEATURE=on"]}, "HostConfig": {"NetworkMode": "host"}},
    ("registry.other.io/team/api@sha256:" + "9" * 64,),
)


async def open_daemon(store: Store | None = None) -> Daemon:
    clock = FakeClock()
    return await Daemon.open(
        config_of(CONFIG),
        store=store or await memory_store(clock),
        clock=clock,
        polling=False,
        docker=NoDocker(),
    )


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    made = await open_daemon()
    yield made
    await made.close(2)


async def test_a_previous_image_never_seen_and_not_allowed_is_refused(daemon: Daemon) -> None:
    with pytest.raises(Invalid) as refused:
        await daemon.deployments.register(
            Registration("api", "registry.example.com/team/api:v2", "127.0.0.1:1/evil/x:v1"), "ci"
        )
    assert (refused.value.status, refused.value.code) == (422, "previous_image_not_allowed")
    assert "127.0.0.1:1/evil/x:v1" in str(refused.value) and "images" in str(refused.value)
    assert await daemon.store.deployments() == []


async def test_a_lookalike_repository_is_refused(daemon: Daemon) -> None:
    for image in ("registry.example.com/team/api-evil:v1", "registry.example.com.evil.io/team/api:v1"):
        with pytest.raises(Invalid):
            await daemon.deployments.register(Registration("api", "x:v2", image), "ci")
    assert await daemon.store.deployments() == []


async def test_an_allowed_previous_image_is_accepted(daemon: Daemon) -> None:
    deployment, _ = await daemon.deployments.register(
        Registration("api", "registry.example.com/team/api:v2", "registry.example.com/team/api:v1"), "ci"
    )
    assert deployment.previous_image == "registry.example.com/team/api:v1"
    previous = deployment.facts.previous
    assert previous is not None and (previous.image, previous.image_id) == (
        "registry.example.com/team/api:v1",
        "",
    )


async def test_a_service_without_container_keeps_previous_image_as_a_label(daemon: Daemon) -> None:
    deployment, _ = await daemon.deployments.register(Registration("hook", "h:v2", "anything/at:all"), "ci")
    assert deployment.previous_image == "anything/at:all"


async def add_history(store: Store, service: str, snapshot: ContainerSnapshot) -> None:
    """A deployment of ``service`` some time ago whose running container watchdogd captured."""
    await store.add_deployment(
        service, snapshot.image, None, 1.0, 60.0, DeploymentFacts("docker", None, snapshot, ())
    )


async def test_a_previous_image_recorded_as_run_is_pinned_to_what_ran() -> None:
    """After a restart (the old container no longer runs), the request names an image this host ran:
    the rollback gets the recorded image ID, digests and configuration, not the name alone."""
    clock = FakeClock()
    store = await memory_store(clock)
    await add_history(store, "api", RECORDED)
    daemon = await open_daemon(store)
    try:
        deployment, _ = await daemon.deployments.register(
            Registration("api", "registry.other.io/team/api:v2", "registry.other.io/team/api:v1"), "ci"
        )
    finally:
        await daemon.close(2)
    assert deployment.facts.previous == RECORDED


async def test_a_previous_image_recorded_by_digest_or_id_is_found() -> None:
    clock = FakeClock()
    store = await memory_store(clock)
    await add_history(store, "api", RECORDED)
    daemon = await open_daemon(store)
    try:
        for named in (RECORDED.image_id, RECORDED.digests[0], "registry.other.io/team/api:v1"):
            deployment, _ = await daemon.deployments.register(Registration("api", "x:v2", named), "ci")
            assert deployment.facts.previous == RECORDED, named
    finally:
        await daemon.close(2)


async def test_an_image_another_service_ran_is_not_recorded_for_this_one() -> None:
    clock = FakeClock()
    store = await memory_store(clock)
    await add_history(store, "web", RECORDED)
    daemon = await open_daemon(store)
    try:
        with pytest.raises(Invalid):
            await daemon.deployments.register(Registration("api", "x:v2", RECORDED.image), "ci")
    finally:
        await daemon.close(2)


async def test_the_api_answers_422_with_the_code(tmp_path: Path, daemon: Daemon) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  - {name: ci, role: deployer, token: ci-token-0123456789}\n")
    client = TestClient(TestServer(create_app(daemon, Tokens.load(tokens))))
    await client.start_server()
    try:
        answer = await client.post(
            "/v1/deployments",
            json={"service": "api", "image": "x:v2", "previous_image": "127.0.0.1:1/evil/x:v1"},
            headers={"Authorization": "Bearer ci-token-0123456789"},
        )
        body = await answer.json()
    finally:
        await client.close()
    assert answer.status == 422, body
    assert body["error"]["code"] == "previous_image_not_allowed"
