"""How long the container step takes against a bare ``docker stop`` + ``docker run``.

Each repetition deploys v2 over v1 (the test app images), then times:

- the step: v2 -> v1 with a small ``settle``, no probe (inspect, image check,
  graceful stop, rename, create, start, settle);
- the bare way, through the SDK: stop, remove, run v1 with the same settings.

Both stop the same app (it exits on SIGTERM at once), so the difference is the
step's own bookkeeping plus ``settle``. Target: the step within 1.5x the bare way.

With ``--compose`` it also times a 3-replica Compose service (Debian's
``docker-compose``): the step over every replica, the kept ones taken out of
the project, against ``docker-compose up -d`` putting v1 back by itself.

Run: ``.venv/bin/python bench/container_step.py [--repeat N] [--settle S] [--compose]``
(needs the Docker engine; every container it makes is removed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.testbed.images import APP_V1, APP_V2, ensure_app_images
from watchdogd.config.models import ComposeTarget, ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.container import ContainerStep, capture, capture_target
from watchdogd.rollback.targets import ComposeService

MAX_REPEAT = 10
REPLICAS = 3
COMPOSE_FILE = """\
version: "2.4"
services:
  api:
    image: "${IMAGE}"
    network_mode: host
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $$!; done"]
    stop_grace_period: 10s
    restart: always
    labels:
      org.watchdogd-bench: "1"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_kwargs(name: str, port: int) -> dict[str, Any]:
    return {
        "detach": True,
        "name": name,
        "network_mode": "host",
        "environment": {"PORT": str(port), "FEATURE_FLAG": "on"},
        "labels": {"org.watchdogd-bench": "1"},
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 3},
    }


def wait_running(client: Any, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while client.api.inspect_container(name)["State"]["Status"] != "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not running after {timeout}s")
        time.sleep(0.05)


async def time_step(client: Any, prefix: str, index: int, settle: float) -> float:
    name = f"{prefix}step-{index}"
    port = free_port()
    client.containers.run(APP_V1, **run_kwargs(name, port))
    previous = await capture(client, name)
    client.containers.get(name).remove(force=True)
    client.containers.run(APP_V2, **run_kwargs(name, port))
    wait_running(client, name)
    current = await capture(client, name)
    settings = ContainerStepConfig(stop_timeout="10s", healthy_timeout="30s", settle=f"{settle}s")
    target = RollbackTarget(
        service="bench",
        deployment_id=f"b{index}",
        config=ServiceConfig(container=name, rollback=RollbackConfig(container=settings)),
        previous=previous,
        current=current,
    )
    step = ContainerStep(client)
    started = time.perf_counter()
    result = await step.run(target)
    elapsed = time.perf_counter() - started
    if result.status != "done":
        raise RuntimeError(f"step {result.status}: {result.detail}")
    return elapsed


def time_bare(client: Any, prefix: str, index: int) -> float:
    name = f"{prefix}bare-{index}"
    port = free_port()
    client.containers.run(APP_V2, **run_kwargs(name, port))
    wait_running(client, name)
    started = time.perf_counter()
    old = client.containers.get(name)
    old.stop(timeout=10)
    old.remove()
    client.containers.run(APP_V1, **run_kwargs(name, port))
    return time.perf_counter() - started


def compose(directory: str, project: str, image: str, *args: str) -> None:
    subprocess.run(
        ["docker-compose", "-p", project, *args],
        cwd=directory,
        env={**os.environ, "IMAGE": image},
        capture_output=True,
        timeout=120,
        check=True,
    )


def up(directory: str, project: str, image: str) -> None:
    compose(directory, project, image, "up", "-d", "--scale", f"api={REPLICAS}")


async def time_compose_step(client: Any, directory: str, project: str, index: int, settle: float) -> float:
    target = ComposeService(project, "api")
    up(directory, project, APP_V1)
    previous = await capture_target(client, target)
    up(directory, project, APP_V2)
    current = await capture_target(client, target)
    settings = ContainerStepConfig(stop_timeout="10s", healthy_timeout="30s", settle=f"{settle}s")
    config = ServiceConfig(
        compose=ComposeTarget(project=project, service="api"), rollback=RollbackConfig(container=settings)
    )
    rollback = RollbackTarget("bench", f"c{index}", config, previous=previous, current=current)
    started = time.perf_counter()
    result = await ContainerStep(client).run(rollback)
    elapsed = time.perf_counter() - started
    if result.status != "done":
        raise RuntimeError(f"compose step {result.status}: {result.detail}")
    return elapsed


def time_compose_bare(directory: str, project: str) -> float:
    up(directory, project, APP_V2)
    started = time.perf_counter()
    up(directory, project, APP_V1)
    return time.perf_counter() - started


def compose_down(client: Any, directory: str, project: str) -> None:
    compose(directory, project, APP_V1, "down", "-t", "1")
    for container in client.containers.list(all=True, filters={"name": project}):
        if container.name.startswith(project):  # the kept ones, out of the project
            container.remove(force=True)


def cleanup(client: Any, prefix: str) -> None:
    for container in client.containers.list(all=True, filters={"name": prefix}):
        if container.name.startswith(prefix):
            container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help=f"repetitions (at most {MAX_REPEAT})")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds running that count as healthy")
    parser.add_argument("--compose", action="store_true", help=f"also a {REPLICAS}-replica Compose service")
    args = parser.parse_args()
    repeat = max(1, min(args.repeat, MAX_REPEAT))

    # The step logs one event per run; the figures are the output here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    client = docker.from_env(timeout=60)
    ensure_app_images(client)
    prefix = f"wdbench-{secrets.token_hex(3)}-"
    steps: list[float] = []
    bares: list[float] = []
    try:
        for index in range(repeat):
            # Alternate the order so that neither side always runs on a warmer engine.
            if index % 2:
                bares.append(time_bare(client, prefix, index))
                steps.append(asyncio.run(time_step(client, prefix, index, args.settle)))
            else:
                steps.append(asyncio.run(time_step(client, prefix, index, args.settle)))
                bares.append(time_bare(client, prefix, index))
            cleanup(client, prefix)
    finally:
        cleanup(client, prefix)
        client.close()

    if args.compose:
        compose_figures(client_factory=lambda: docker.from_env(timeout=60), repeat=repeat, settle=args.settle)

    step_median, bare_median = statistics.median(steps), statistics.median(bares)
    print(f"repetitions      {repeat} (settle {args.settle:g}s)")
    print(f"container step   median {step_median:.3f}s  [{', '.join(f'{s:.3f}' for s in steps)}]")
    print(f"stop + run       median {bare_median:.3f}s  [{', '.join(f'{s:.3f}' for s in bares)}]")
    ratio = step_median / bare_median
    print(f"ratio            {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")


def compose_figures(client_factory: Any, repeat: int, settle: float) -> None:
    client = client_factory()
    steps: list[float] = []
    bares: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "docker-compose.yml").write_text(COMPOSE_FILE)
        try:
            for index in range(repeat):
                project = f"wdbench{secrets.token_hex(3)}"
                try:
                    steps.append(asyncio.run(time_compose_step(client, directory, project, index, settle)))
                finally:
                    compose_down(client, directory, project)
                project = f"wdbench{secrets.token_hex(3)}"
                try:
                    bares.append(time_compose_bare(directory, project))
                finally:
                    compose_down(client, directory, project)
        finally:
            client.close()
    step_median, bare_median = statistics.median(steps), statistics.median(bares)
    runs = ", ".join(f"{s:.3f}" for s in steps)
    print(f"compose step     median {step_median:.3f}s  [{runs}] ({REPLICAS} replicas)")
    print(f"compose up -d    median {bare_median:.3f}s  [{', '.join(f'{s:.3f}' for s in bares)}]")
    print(f"compose ratio    {step_median / bare_median:.2f}x")


if __name__ == "__main__":
    main()
