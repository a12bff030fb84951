"""The bad container out, the previous one in, and back again when the previous one fails.

Each step of the swap is noted in the run's actions, in order. :func:`restore`
puts every kept bad container back under its name, running, so the service is
never left down.
"""

from __future__ import annotations

import asyncio
from typing import Any

from docker.errors import DockerException
from requests.exceptions import RequestException

from watchdogd.config.models import ContainerStepConfig
from watchdogd.rollback import kept
from watchdogd.rollback.base import StepResult
from watchdogd.rollback.containerhealth import POLL_INTERVAL, tail
from watchdogd.rollback.containerrun import Refused, Run, Unit, policy_of
from watchdogd.rollback.recreate import create_body


async def keep(api: Any, run: Run, unit: Unit, live: dict[str, Any], settings: ContainerStepConfig) -> None:
    """Stop the bad container and keep it as ``unit.failed``, never restarted by the engine."""
    unit.policy = (live.get("HostConfig") or {}).get("RestartPolicy")
    timeout = kept.stop_timeout(live, settings.stop_timeout)
    if (live.get("HostConfig") or {}).get("AutoRemove"):
        run.logs[unit.name] = await tail(api, live["Id"])
        await kept.copy(api, live, unit.failed, leave_group=False)
        run.actions.append(f"copied {unit.name} to {unit.failed} (it removes itself when stopped)")
        await asyncio.to_thread(api.stop, live["Id"], timeout=timeout)
        run.actions.append(f"stopped {unit.name}")
        await gone(api, live["Id"])
        return
    await asyncio.to_thread(api.stop, live["Id"], timeout=timeout)
    run.actions.append(f"stopped {unit.name}")
    await kept.never_restart(api, live["Id"])
    await asyncio.to_thread(api.rename, live["Id"], unit.failed)
    run.actions.append(f"renamed {unit.name} to {unit.failed} (restart policy no)")


async def gone(api: Any, container_id: str) -> None:
    """Wait for an auto-removed container to be gone, so its name is free (bounded)."""
    for _ in range(100):
        if await kept.inspect(api, container_id) is None:
            return
        await asyncio.sleep(POLL_INTERVAL)
    await asyncio.to_thread(api.remove_container, container_id, force=True)


async def create(api: Any, run: Run, unit: Unit) -> dict[str, Any]:
    """Create ``unit``'s container from the previous image; a half-made one is removed on failure."""
    body, networks = create_body(unit.config, run.ref)
    created = await asyncio.to_thread(api.create_container_from_config, body, unit.name)
    run.actions.append(f"created {unit.name} from {run.ref} ({unit.config_from} configuration)")
    try:
        for net, endpoint in networks.items():
            await asyncio.to_thread(
                api.connect_container_to_network,
                created["Id"],
                net,
                ipv4_address=(endpoint.get("IPAMConfig") or {}).get("IPv4Address"),
                ipv6_address=(endpoint.get("IPAMConfig") or {}).get("IPv6Address"),
                aliases=endpoint.get("Aliases"),
                links=endpoint.get("Links"),
                driver_opt=endpoint.get("DriverOpts"),
            )
    except (DockerException, RequestException):
        await asyncio.to_thread(api.remove_container, created["Id"], force=True)
        run.actions.append(f"removed {unit.name} (half-made)")
        raise
    attrs = await kept.inspect(api, created["Id"])
    if attrs is None:
        raise Refused(f"{unit.name} vanished right after it was created")
    return attrs


async def restore(api: Any, run: Run, reason: str, logs: str) -> StepResult:
    """Remove what the step made and put every kept bad container back, running; the step failed.

    A container is removed only when its kept bad one is there to take its
    place: without it there is nothing better to run, and it is left as it is.
    """
    notes: list[str] = []
    for unit in (*run.units, *run.extras):
        bad = await kept.inspect(api, unit.failed)
        if bad is None:
            if unit in run.units:
                notes.append(f"no {unit.failed} to put back, {unit.name} left as it is")
            continue
        try:
            made = await kept.inspect(api, unit.name)
            if made is not None:
                await asyncio.to_thread(api.remove_container, made["Id"], force=True)
                run.actions.append(f"removed {unit.name} ({run.ref})")
            await asyncio.to_thread(api.rename, bad["Id"], unit.name)
            policy = unit.policy or policy_of(unit, run)
            if policy and policy.get("Name") not in (None, "", "no"):
                await asyncio.to_thread(api.update_container, bad["Id"], restart_policy=policy)
            await asyncio.to_thread(api.start, bad["Id"])
        except (DockerException, RequestException) as exc:
            explanation = getattr(exc, "explanation", None) or exc
            notes.append(f"putting {unit.failed} back as {unit.name} failed too: {explanation}")
            continue
        run.actions.append(f"renamed {unit.failed} back to {unit.name} and started it")
    back = [u.name for u in (*run.units, *run.extras) if f"renamed {u.failed} back" in " ".join(run.actions)]
    if back:
        notes.append(
            f"the deployed container{'s are' if len(back) > 1 else ' is'} back and running: "
            + ", ".join(back)
        )
    reason = "; ".join([reason, *notes])
    if logs:
        reason += f"\n--- last logs of {run.ref} ---\n{logs}"
    return StepResult("failed", reason, run.data(logs=logs) if logs else run.data())
