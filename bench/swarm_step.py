"""Bench: decision to every replica back on the previous image, watchdogd's Swarm step against a bare
``docker service rollback -d`` of the same 3-replica service, alternated over several rounds in one run.

Run: .venv/bin/python -m bench.swarm_step [rounds]  (the test bed's swarm must be active)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import docker

from tests.integration.test_swarm_rollback import REPLICAS, Service, port_prefix, target_for
from tests.integration.test_swarm_rollback import docker as cli
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ContainerStepConfig
from watchdogd.rollback.container import capture_target
from watchdogd.rollback.swarm import SwarmStep
from watchdogd.rollback.targets import SwarmService

SETTINGS = ContainerStepConfig(healthy_timeout="120s", settle="0s")


def all_back(service: Service, api: Any) -> bool:
    state = (service.inspect(api).get("UpdateStatus") or {}).get("State")
    return state == "rollback_completed" and service.task_images(api) == [(APP_V1, "running")] * REPLICAS


async def bare(service: Service, api: Any) -> float:
    start = time.monotonic()
    cli("service", "rollback", "-d", service.name)
    while not all_back(service, api):  # noqa: ASYNC110 - a poll, as the step does
        await asyncio.sleep(0.25)  # the step polls as often
    return time.monotonic() - start


async def step(service: Service, client: Any, target: Any) -> float:
    start = time.monotonic()
    result = await SwarmStep(client, config=SETTINGS).run(target)
    assert result.status == "done", result.detail
    return time.monotonic() - start


async def main(rounds: int) -> None:
    client = docker.from_env()
    service = Service(f"wdbench-{int(time.time())}", port_prefix())
    service.create()
    times: dict[str, list[float]] = {"step": [], "bare": []}
    try:
        for n in range(rounds):
            for kind in ("step", "bare") if n % 2 == 0 else ("bare", "step"):
                previous = await capture_target(client, SwarmService(service.name))
                service.update("--image", APP_V2, "--env-add", f"ROUND={n}{kind}")
                current = await capture_target(client, SwarmService(service.name))
                if kind == "bare":
                    took = await bare(service, client.api)
                else:
                    took = await step(service, client, target_for(service, previous, current))
                times[kind].append(took)
                print(f"round {n} {kind}: {took:.2f}s", flush=True)
    finally:
        cli("service", "rm", service.name)
    s, b = statistics.median(times["step"]), statistics.median(times["bare"])
    print(f"median step {s:.2f}s, bare {b:.2f}s, ratio {s / b:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
