"""A rollback gives back the container as it was: ``docker inspect`` before and after, compared.

v1 is created with every setting this engine accepts under host networking,
replaced by v2 with the same settings, and rolled back. What differs is only
what docs/containers.md lists as the documented differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
from pathlib import Path
from typing import Any

import pytest
from docker.errors import APIError, NotFound

from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import APP_V1, APP_V2
from watchdogd.config.models import ContainerStepConfig, RollbackConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.container import ContainerStep, capture

pytestmark = pytest.mark.integration

IDLE = ["/bin/sh", "-c", "trap 'exit 0' INT TERM; while true; do sleep 1; done"]
SECOND = 1_000_000_000

DOCUMENTED = {
    # the container's own identity and run state
    "Id", "Created", "State", "RestartCount", "ExecIDs", "SizeRw", "SizeRootFs",
    # files the engine makes per container, named by its ID
    "ResolvConfPath", "HostnamePath", "HostsPath", "LogPath", "GraphDriver",
    # the network sandbox (host networking: no endpoint of its own)
    "NetworkSettings",
}  # fmt: skip
"""Top-level inspect fields that are the container's own, never its configuration."""


def _body(image: str, bind_dir: Path, volume: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "Image": image,
        "Cmd": IDLE,
        "Env": ["A=1", "B=two words"],
        "Labels": {**labels, "team": "core"},
        "WorkingDir": "/tmp",
        "User": "0:0",
        "StopSignal": "SIGINT",
        "StopTimeout": 7,
        "Healthcheck": {
            "Test": ["CMD-SHELL", "test -d /named"],
            "Interval": SECOND,
            "Timeout": 2 * SECOND,
            "Retries": 2,
            "StartPeriod": SECOND,
        },
        "Volumes": {"/anon": {}},
        "Hostname": "inspected",
        "Domainname": "example.internal",
        "HostConfig": {
            "NetworkMode": "host",
            "Binds": [f"{bind_dir}:/data:ro", f"{volume}:/named"],
            "Devices": [
                {"PathOnHost": "/dev/null", "PathInContainer": "/dev/xnull", "CgroupPermissions": "rwm"}
            ],
            "DeviceCgroupRules": ["c 1:3 mr"],
            "CapAdd": ["NET_ADMIN"],
            "CapDrop": ["MKNOD"],
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
            "IpcMode": "private",
            "Sysctls": {"kernel.shm_rmid_forced": "1"},
            "Tmpfs": {"/run/t": "size=1m"},
            "ReadonlyRootfs": True,
            "MaskedPaths": ["/proc/kcore", "/proc/keys"],
            "ReadonlyPaths": ["/proc/sys", "/proc/bus"],
            "OomScoreAdj": 100,
            "CgroupnsMode": "private",
            "Init": True,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
            "Dns": ["127.0.0.1"],
            "DnsOptions": ["ndots:2"],
            "DnsSearch": ["example.internal"],
            "ExtraHosts": ["db.internal:127.0.0.2"],
            "ShmSize": 16 * 1024 * 1024,
            "Memory": 64 * 1024 * 1024,
            "MemorySwap": 128 * 1024 * 1024,
            "MemoryReservation": 32 * 1024 * 1024,
            "CpuShares": 512,
            "NanoCpus": 500_000_000,
            "PidsLimit": 100,
            "CpusetCpus": "0",
            "GroupAdd": ["1234"],
            "SecurityOpt": ["no-new-privileges"],
        },
    }


def _comparable(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {k: copy.deepcopy(v) for k, v in attrs.items() if k not in DOCUMENTED}
    out["Mounts"] = sorted(out.get("Mounts") or (), key=lambda m: str(m.get("Destination")))
    # documented: an anonymous volume comes back attached by its name, so the engine lists it in Binds
    anonymous = {
        str(m["Name"]) for m in out["Mounts"] if m.get("Type") == "volume" and len(m.get("Name", "")) == 64
    }
    for mount in out["Mounts"]:
        if mount.get("Name") in anonymous:
            mount.pop("Mode", None)  # documented: "z", the engine's default for a volume named in Binds
    host = out["HostConfig"]
    host["Binds"] = [b for b in host.get("Binds") or () if str(b).split(":")[0] not in anonymous]
    return out


def _diff(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        lines: list[str] = []
        for key in sorted(set(before) | set(after)):
            lines += _diff(before.get(key), after.get(key), f"{path}.{key}")
        return lines
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


async def test_a_rolled_back_container_inspects_as_the_original_but_for_the_documented_differences(
    docker_client: Any, app_images: dict[str, str], container_registry: ContainerRegistry, tmp_path: Path
) -> None:
    api = docker_client.api
    name = container_registry.name("all")
    volume = f"wdtest-{container_registry.run_id}-{secrets.token_hex(3)}"
    api.create_volume(volume)
    (tmp_path / "seen").write_text("bind\n")
    anonymous: list[str] = []
    try:
        made = api.create_container_from_config(
            _body(APP_V1, tmp_path, volume, container_registry.labels), name
        )
        api.start(made["Id"])
        api.exec_start(api.exec_create(made["Id"], ["/bin/sh", "-c", "echo kept > /anon/marker"]))
        before = api.inspect_container(made["Id"])
        anonymous = [str(m["Name"]) for m in before["Mounts"] if m["Destination"] == "/anon"]
        previous = await capture(docker_client, name)
        api.remove_container(made["Id"], force=True)  # the deploy (its anonymous volume stays)

        bad = api.create_container_from_config(
            _body(APP_V2, tmp_path, volume, container_registry.labels), name
        )
        api.start(bad["Id"])
        current = await capture(docker_client, name)
        anonymous += [
            str(m["Name"]) for m in api.inspect_container(bad["Id"])["Mounts"] if m["Destination"] == "/anon"
        ]
        settings = ContainerStepConfig(stop_timeout="10s", healthy_timeout="20s", settle="300ms")
        config = ServiceConfig(container=name, rollback=RollbackConfig(container=settings))
        target = RollbackTarget("app", "d-inspect", config, previous=previous, current=current)
        async with asyncio.timeout(60):
            result = await ContainerStep(docker_client).run(target)
        assert result.status == "done", result.detail

        after = api.inspect_container(name)
        assert after["Id"] != before["Id"] and after["Image"] == before["Image"]
        differences = _diff(_comparable(before), _comparable(after))
        assert differences == [], "\n".join(differences)
        marker = api.exec_start(api.exec_create(after["Id"], ["cat", "/anon/marker"]))
        assert marker.strip() == b"kept"  # the anonymous volume reattached, not made anew
    finally:
        container_registry.cleanup()
        for leftover in api.containers(all=True, filters={"name": f"{name}-failed-"}):
            api.remove_container(leftover["Id"], force=True)
        for vol in (volume, *anonymous):
            with contextlib.suppress(NotFound, APIError):
                api.remove_volume(vol, force=True)
