"""The docker source against real containers: state, restarts, crashes, OOM, health, stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import docker
import pytest
from prometheus_client import CollectorRegistry

from tests.testbed.containers import ContainerRegistry, free_port
from tests.testbed.images import APP_IMAGES, AppBehaviour
from watchdogd.config.models import DOCKER_FIELDS, DockerSource
from watchdogd.model import Sample
from watchdogd.sources.base import Measure, Poller
from watchdogd.sources.docker import ContainerState, CpuReading, DockerContainer, cpu_percent, memory_percent
from watchdogd.telemetry import Metrics, source_errors

pytestmark = pytest.mark.integration

FIELDS = {name: Measure("field", name) for name in DOCKER_FIELDS}
RunRaw = Callable[..., Any]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def make_source() -> AsyncIterator[Callable[..., DockerContainer]]:
    made: list[DockerContainer] = []

    def make(container: str, **kwargs: Any) -> DockerContainer:
        source = DockerContainer("box", DockerSource(type="docker", container=container), **kwargs)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.close()


@pytest.fixture
def run_raw(app_images: dict[str, str], container_registry: ContainerRegistry) -> RunRaw:
    """Runs the app image with any ``containers.run`` options; removed after the test."""

    def run(**kwargs: Any) -> Any:
        kwargs.setdefault("environment", AppBehaviour().env(free_port()))
        container = container_registry.client.containers.run(
            APP_IMAGES["v1"],
            detach=True,
            name=container_registry.name(),
            network_mode="host",
            labels=container_registry.labels,
            **kwargs,
        )
        return container_registry.track(container)

    return run


async def poll(source: DockerContainer, names: Sequence[str] = DOCKER_FIELDS) -> dict[str, Sample]:
    samples = await source.fetch([FIELDS[n] for n in names], time.time())
    return {n: samples[FIELDS[n]] for n in names}


async def until(
    source: DockerContainer, check: Callable[[dict[str, Sample]], bool], timeout: float
) -> dict[str, Sample]:
    deadline = time.monotonic() + timeout
    while True:
        samples = await poll(source)
        if check(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


def values(samples: dict[str, Sample], *names: str) -> list[float | None]:
    return [samples[n].value for n in names]


# --- a healthy container -------------------------------------------------------------


async def test_running_container(app_container: Any, make_source: Callable[..., DockerContainer]) -> None:
    app = app_container("v1")
    source = make_source(app.name)
    first = await poll(source)
    assert values(first, "running", "crashed", "restarts", "oom_killed", "exit_code") == [1, 0, 0, 0, 0]
    assert first["healthy"].value is None and "has no health check" in (first["healthy"].reason or "")
    # an unlimited container's memory is a share of the host's: tiny for this app
    memory = first["memory_percent"].value
    assert memory is not None and 0 < memory < 1
    # CPU % needs two readings; the first poll only takes one, without sleeping
    assert first["cpu_percent"].value is None and "second reading" in (first["cpu_percent"].reason or "")
    await asyncio.sleep(0.5)
    cpu = (await poll(source))["cpu_percent"].value
    assert cpu is not None and 0 <= cpu < 20


async def test_cpu_and_memory_of_a_busy_limited_container(
    run_raw: RunRaw, make_source: Callable[..., DockerContainer]
) -> None:
    # one core spinning; ~20 MB held in a shell variable under a 64 MB limit
    script = "x=$(head -c 20000000 /dev/zero | tr '\\0' a); while :; do :; done"
    container = run_raw(command=["sh", "-c", script], mem_limit="64m", memswap_limit="64m")
    source = make_source(container.name)
    await until(source, lambda s: (s["memory_percent"].value or 0) > 25, timeout=10)
    await asyncio.sleep(1.0)
    samples = await poll(source, ["cpu_percent", "memory_percent"])
    cpu, memory = values(samples, "cpu_percent", "memory_percent")
    assert cpu is not None and 60 < cpu < 140
    assert memory is not None and 25 < memory < 100


async def test_health_check_status(run_raw: RunRaw, make_source: Callable[..., DockerContainer]) -> None:
    def with_check(unhealthy: bool) -> Any:
        port = free_port()
        url = f"http://127.0.0.1:{port}/cgi-bin/health"
        check = {"test": ["CMD", "wget", "-q", "-O", "/dev/null", url], "interval": 200_000_000, "retries": 1}
        env = AppBehaviour(unhealthy=unhealthy).env(port)
        return run_raw(environment=env, healthcheck=check)

    good, bad = with_check(False), with_check(True)
    good_source, bad_source = make_source(good.name), make_source(bad.name)
    healthy = await until(good_source, lambda s: s["healthy"].value is not None, timeout=10)
    unhealthy = await until(bad_source, lambda s: s["healthy"].value is not None, timeout=10)
    assert healthy["healthy"].value == 1.0
    assert unhealthy["healthy"].value == 0.0
    assert unhealthy["running"].value == 1.0


# --- crashes ---------------------------------------------------------------------------


async def test_crash_exit_code_and_not_running(
    app_container: Any, make_source: Callable[..., DockerContainer]
) -> None:
    app = app_container("v1", AppBehaviour(crash_after=1))
    source = make_source(app.name)
    before = await poll(source)
    assert values(before, "running", "crashed") == [1, 0]
    assert app.wait_exit(timeout=10) == 1
    after = await poll(source)
    assert values(after, "running", "crashed", "exit_code", "healthy") == [0, 1, 1, 0]
    assert "not running" in (after["memory_percent"].reason or "")


async def test_restarts_after_crash_count_as_crashed(
    run_raw: RunRaw, make_source: Callable[..., DockerContainer]
) -> None:
    env = AppBehaviour(crash_after=1).env(free_port())
    container = run_raw(environment=env, restart_policy={"Name": "on-failure", "MaximumRetryCount": 5})
    source = make_source(container.name)
    await source.deployed(time.time())
    first = await poll(source)
    assert values(first, "crashed", "restarts") == [0, 0]
    # restarted by Docker and running again: still a crash since the deploy
    after = await until(
        source, lambda s: (s["restarts"].value or 0) >= 1 and s["running"].value == 1, timeout=10
    )
    assert values(after, "running", "crashed", "exit_code") == [1, 1, 0]
    assert (after["restarts"].value or 0) >= 1


async def test_deployed_sets_the_baseline(
    app_container: Any, make_source: Callable[..., DockerContainer]
) -> None:
    app = app_container("v1")
    source = make_source(app.name)
    assert (await poll(source, ["crashed"]))["crashed"].value == 0
    await asyncio.to_thread(app.container.restart, timeout=5)
    # restarted since the first observation, which was the baseline
    assert (await poll(source, ["crashed"]))["crashed"].value == 1
    # a deploy now: the container as it is becomes the baseline
    await source.deployed(time.time())
    assert (await poll(source, ["crashed", "running"]))["crashed"].value == 0
    await asyncio.to_thread(app.container.restart, timeout=5)
    assert (await poll(source, ["crashed"]))["crashed"].value == 1


async def test_oom_killed(run_raw: RunRaw, make_source: Callable[..., DockerContainer]) -> None:
    script = "x=$(head -c 60000000 /dev/zero | tr '\\0' a); echo survived"
    container = run_raw(command=["sh", "-c", script], mem_limit="16m", memswap_limit="16m")
    assert (await asyncio.to_thread(container.wait, timeout=20))["StatusCode"] == 137
    samples = await poll(make_source(container.name))
    assert values(samples, "oom_killed", "exit_code", "running", "crashed") == [1, 137, 0, 1]


# --- no container, no engine -----------------------------------------------------------


async def test_missing_container(
    container_registry: ContainerRegistry, make_source: Callable[..., DockerContainer], metrics: Metrics
) -> None:
    name = container_registry.name("never-created")
    source = make_source(name)
    samples = await Poller(source, 5.0, metrics).poll(list(FIELDS.values()), time.time())
    assert samples[FIELDS["running"]].value == 0.0
    for field in DOCKER_FIELDS:
        if field != "running":
            sample = samples[FIELDS[field]]
            assert sample.value is None and sample.reason == f"no container named {name}"
    # a missing container is an answer, not a failing source
    assert source_errors(metrics.registry, "box") == 0


async def test_engine_down_is_a_source_error(
    make_source: Callable[..., DockerContainer], metrics: Metrics, tmp_path: Any
) -> None:
    socket = tmp_path / "no-engine.sock"
    source = make_source(
        "api", make_client=lambda: docker.DockerClient(base_url=f"unix://{socket}", timeout=2)
    )
    started = time.perf_counter()
    samples = await Poller(source, 5.0, metrics).poll([FIELDS["running"]], time.time())
    assert time.perf_counter() - started < 4
    sample = samples[FIELDS["running"]]
    assert sample.value is None and (sample.reason or "").startswith("cannot reach the Docker engine")
    assert source_errors(metrics.registry, "box") == 1


async def test_polls_do_not_block_the_event_loop(
    app_container: Any, make_source: Callable[..., DockerContainer]
) -> None:
    app = app_container("v1")
    source = make_source(app.name)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    for _ in range(5):
        await poll(source)
    elapsed = time.perf_counter() - started
    ticker.cancel()
    # the loop kept ticking while the SDK worked in threads
    assert ticks >= elapsed / 0.005 * 0.3


# --- the arithmetic ----------------------------------------------------------------------


def test_memory_percent_leaves_out_page_cache() -> None:
    stats = {"memory_stats": {"usage": 600, "limit": 1000, "stats": {"total_inactive_file": 100}}}
    assert memory_percent(stats) == 50.0
    assert (
        memory_percent({"memory_stats": {"usage": 600, "limit": 1000, "stats": {"inactive_file": 200}}})
        == 40.0
    )
    assert memory_percent({"memory_stats": {}}) is None


def test_cpu_percent_between_readings() -> None:
    state = ContainerState("c1", "running", 0, 0, False, None, "t0")

    def reading(container_ns: int, system_ns: int, cpus: int = 4) -> CpuReading | None:
        stats = {
            "cpu_stats": {
                "cpu_usage": {"total_usage": container_ns},
                "system_cpu_usage": system_ns,
                "online_cpus": cpus,
            }
        }
        return CpuReading.of(state, stats)

    first, second = reading(1_000, 10_000), reading(1_500, 12_000)
    assert first is not None and second is not None
    assert cpu_percent(first, second) == 100.0  # 500 of 2000 host ns on 4 CPUs: one core busy
    assert cpu_percent(None, second) is None
    restarted = CpuReading("c1", "t1", 10, 13_000, 4)
    assert cpu_percent(second, restarted) is None
