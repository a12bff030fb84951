"""How long the container step takes against a bare ``docker stop`` + ``docker run``.

Each repetition deploys v2 over v1 (the test app images), then times:

- the step: v2 -> v1 with a small ``settle``, no probe (inspect, image check,
  graceful stop, rename, create, start, settle);
- the bare way, through the SDK: stop, remove, run v1 with the same settings.

Both stop the same app (it exits on SIGTERM at once), so the difference is the
step's own bookkeeping plus ``settle``. Target: the step within 1.5x the bare way.

Run: ``.venv/bin/python bench/container_step.py [--repeat N] [--settle S]``
(needs the Docker engine; every container it makes is removed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import docker
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.testbed.images import APP_V1, APP_V2, ensure_app_images
from watchdogd.config.models import ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.container import ContainerStep, capture

MAX_REPEAT = 10


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


def cleanup(client: Any, prefix: str) -> None:
    for container in client.containers.list(all=True, filters={"name": prefix}):
        if container.name.startswith(prefix):
            container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help=f"repetitions (at most {MAX_REPEAT})")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds running that count as healthy")
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

    step_median, bare_median = statistics.median(steps), statistics.median(bares)
    print(f"repetitions      {repeat} (settle {args.settle:g}s)")
    print(f"container step   median {step_median:.3f}s  [{', '.join(f'{s:.3f}' for s in steps)}]")
    print(f"stop + run       median {bare_median:.3f}s  [{', '.join(f'{s:.3f}' for s in bares)}]")
    ratio = step_median / bare_median
    print(f"ratio            {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
