"""The container step: back to the previous image, the bad containers kept for forensics.

The step acts on the service's target (see :mod:`watchdogd.rollback.targets`):
one container, or every replica of a Compose service, rolled back together.
Each container is recreated from its snapshot (see
:mod:`watchdogd.rollback.recreate`): the *previous* container's when there is
one (what last ran healthy on that image), else the bad container's
configuration on the previous image.

Which image. ``P`` is an image watchdogd saw running for the service (its
snapshot has the image ID and ``RepoDigests``), started by that ID when its
tag now names other bytes; or, known by name alone, one the service's
``images`` allow-list matches, else it is not started at all. A missing image
is pulled only with ``pull: true`` and only from a repository ``images``
names (a recorded one by its digest first, then checked against its ID);
otherwise the step fails before it stops anything.

Every state a crash can leave is a starting point, for each container ``N``
(``F`` is ``N-failed-<deployment>``)::

    N runs P, running                -> check health; already_done when healthy
    N has P, created or exited       -> start it, wait until healthy
    N has another image, no F        -> (image check) stop, keep as F, create, start, wait
    N has another image, F exists    -> refuse: two bad candidates, nothing touched
    no N, F exists                   -> create, start, wait (the rename happened)
    no N, no F                       -> create, start, wait (nothing left to keep)

The kept container ``F`` is stopped with its own ``StopTimeout`` (Compose's
``stop_grace_period``) when it has one, gets restart policy ``no``, and is
copied first when it has ``AutoRemove`` (see :mod:`watchdogd.rollback.kept`).
Replicas a scaled-up deploy added are kept the same way. Replicas are kept,
recreated and started one after the other (the others serve meanwhile), then
checked together.

The service is never left down: when a previous container cannot be created
or started, or does not become healthy, every container the step made is
removed and every kept one goes back to its name, with its restart policy,
and is started; the step fails with the reason and P's last logs (the plan
stops there). A crash in the middle of that restore leaves "no N, F exists":
the next run tries the rollback again, and restores again if P still fails.

After a successful rollback of a Compose service, each kept container leaves
the project (a copy without its labels), so the next ``docker compose up``
sees only the rolled-back containers.

The parts: the run's facts (:mod:`watchdogd.rollback.containerrun`), which image
(:mod:`watchdogd.rollback.containerimage`), the swap and the restore
(:mod:`watchdogd.rollback.containerswap`), the health wait
(:mod:`watchdogd.rollback.containerhealth`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from docker.errors import DockerException
from requests.exceptions import RequestException

from watchdogd.config.models import ContainerStepConfig
from watchdogd.rollback import kept
from watchdogd.rollback.base import ContainerSnapshot, RollbackTarget, StepResult, StepStatus
from watchdogd.rollback.containerhealth import Probe, tail, wait_healthy
from watchdogd.rollback.containerimage import ensure_image, image_id, pullable
from watchdogd.rollback.containerrun import Refused, Run, Unit, is_previous, prepare
from watchdogd.rollback.containerswap import create, keep, restore
from watchdogd.rollback.recreate import capture as capture_one
from watchdogd.rollback.recreate import snapshot_of
from watchdogd.rollback.targets import SwarmService, Target, failed_name

__all__ = ["ContainerStep", "capture", "capture_target", "failed_name"]

log = structlog.get_logger("watchdogd.rollback.container")

T = TypeVar("T")


def _api(client: Any) -> Any:
    """The low-level API client of a ``docker.DockerClient`` (or the API client itself)."""
    return getattr(client, "api", client)


async def capture(client: Any, name: str) -> ContainerSnapshot:
    """The configuration of container ``name`` as it runs now (call it at deploy time)."""
    return await capture_one(_api(client), name)


async def capture_target(client: Any, target: Target) -> ContainerSnapshot | None:
    """The target's containers as they are now: the first, its replicas after; None when there is none."""
    api = _api(client)
    if isinstance(target, SwarmService):
        from watchdogd.rollback.swarmspec import capture_service

        return await capture_service(api, target.name)
    shots = []
    for name in await target.names(api):
        attrs = await kept.inspect(api, name)
        if attrs is not None:
            shots.append(await snapshot_of(api, attrs))
    if not shots:
        return None
    first, *others = shots
    return ContainerSnapshot(
        first.name, first.image, first.image_id, first.config, first.digests, tuple(others)
    )


class ContainerStep:
    """Recreates the service's containers from the previous image; see the module docstring."""

    name = "container"

    def __init__(
        self,
        client: Any,
        probe: Probe | None = None,
        config: ContainerStepConfig | None = None,
    ) -> None:
        self.api = _api(client)
        self.probe = probe
        self.config = config
        """Overrides the service's ``rollback.container`` settings when given."""

    def _settings(self, target: RollbackTarget) -> ContainerStepConfig:
        return self.config or target.config.rollback.container

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _inspect(self, ref: str) -> dict[str, Any] | None:
        return await kept.inspect(self.api, ref)

    async def run(self, target: RollbackTarget) -> StepResult:
        run = prepare(target)
        if isinstance(run, StepResult):
            return run
        bound = log.bind(service=target.service, deployment=target.deployment_id, target=run.target.label)
        try:
            result = await self._run(run, target)
        except Refused as exc:
            result = StepResult("failed", str(exc), run.data())
        except (DockerException, RequestException) as exc:
            result = StepResult("failed", f"Docker engine error: {type(exc).__name__}: {exc}", run.data())
        bound.info("container_step", status=result.status, detail=result.detail, actions=run.actions)
        return result

    async def _run(self, run: Run, target: RollbackTarget) -> StepResult:
        settings = self._settings(target)
        todo: list[Unit] = []
        for unit in run.units:
            live = await self._inspect(unit.name)
            if live is not None and is_previous(live, run):
                unit.live = live
                continue
            if live is not None:
                if await self._inspect(unit.failed) is not None:
                    raise Refused(
                        f"both {unit.name} ({live['Config'].get('Image')}) and {unit.failed} exist: "
                        "refusing to guess which one is the bad container"
                    )
                current = target.current
                deployed = {c.image_id for c in current.containers} if current is not None else set()
                if deployed and "" not in deployed and live["Image"] not in deployed:
                    raise Refused(
                        f"{unit.name} runs {live['Config'].get('Image')} ({live['Image'][:19]}), neither the "
                        "deployed image nor the previous one: a newer deploy? nothing touched"
                    )
            todo.append(unit)
        names = {u.name for u in run.units}
        extras = [n for n in await run.target.names(self.api) if n not in names] if run.target.grouped else []
        if todo:
            await ensure_image(self.api, run, settings)
        started: set[str] = set()
        try:
            for unit in todo:  # one replica after the other: the others serve meanwhile
                live = await self._inspect(unit.name)
                if live is not None:
                    await keep(self.api, run, unit, live, settings)
                unit.live = await create(self.api, run, unit)
                await self._call(self.api.start, unit.live["Id"])
                run.actions.append(f"started {unit.name}")
                started.add(unit.name)
            for name in extras:
                extra = Unit(name, failed_name(name, run.deployment_id), {}, "")
                live = await self._inspect(name)
                if live is not None and not is_previous(live, run):
                    await keep(self.api, run, extra, live, settings)
                    run.extras.append(extra)
            for unit in run.units:
                assert unit.live is not None
                if unit.name not in started and not unit.live["State"].get("Running"):
                    await self._call(self.api.start, unit.live["Id"])
                    run.actions.append(f"started {unit.name}")
        except (DockerException, RequestException) as exc:
            # The engine refused a previous container: the bad ones are still better than none.
            explanation = getattr(exc, "explanation", None) or exc
            return await restore(self.api, run, f"recreating from {run.ref} failed: {explanation}", "")
        verdicts = await asyncio.gather(
            *(
                wait_healthy(self.api, self.probe, str(u.live["Id"]), settings)
                for u in run.units
                if u.live is not None
            )
        )
        bad = [(u, why) for u, (ok, why) in zip(run.units, verdicts, strict=True) if not ok]
        if bad:
            unit, why = bad[0]
            assert unit.live is not None
            logs = await tail(self.api, str(unit.live["Id"]))
            reason = f"previous image {run.ref} did not become healthy in {unit.name}: {why}"
            return await restore(self.api, run, reason, logs)
        if run.target.grouped:  # each kept container is copied out of the project, all at once
            left = await asyncio.gather(
                *(kept.leave_group(self.api, unit.failed) for unit in (*run.units, *run.extras))
            )
            run.actions += [done for done in left if done]
        status: StepStatus = "done" if run.actions else "already_done"
        whys = sorted({why for _, why in verdicts if why})
        names_text = ", ".join(u.name for u in run.units)
        detail = f"{names_text} run{'s' if len(run.units) == 1 else ''} {run.ref}"
        detail += f"; {'; '.join(whys)}" if whys else ""
        ids = [str(u.live["Id"]) for u in run.units if u.live is not None]
        return StepResult(status, detail, run.data(container_id=ids[0], container_ids=ids))

    async def describe(self, target: RollbackTarget) -> list[str]:
        """What ``run`` would do from the state Docker is in now; reads, never changes anything."""
        run = prepare(target)
        if isinstance(run, StepResult):
            return [f"{run.status}: {run.detail}"]
        s = self._settings(target)
        check = "its Docker healthcheck if it has one, else " + (
            f"running for {s.settle:g}s" if self.probe is None else "the service's health probe"
        )
        names = ", ".join(u.name for u in run.units)
        wait = f"wait up to {s.healthy_timeout:g}s until {names} {'is' if len(run.units) == 1 else 'are'} "
        wait += f"healthy: {check}"
        restore = (
            "if it is not healthy: remove it, rename "
            + ", ".join(f"{u.failed} back to {u.name}" for u in run.units)
            + " and start it"
        )
        lines: list[str] = []
        try:
            states = [(u, await self._inspect(u.name), await self._inspect(u.failed)) for u in run.units]
            if run.image_id:
                local = await image_id(self.api, run.ref) == run.image_id or (
                    await image_id(self.api, run.image_id) == run.image_id
                )
            else:
                local = await image_id(self.api, run.ref) is not None
            unknown = False
        except (DockerException, RequestException) as exc:
            states, local, unknown = [(u, None, None) for u in run.units], True, True
            lines.append(
                f"(Docker engine unreachable: {type(exc).__name__}; assuming {names} runs the deploy)"
            )
        if all(
            live is not None and is_previous(live, run) and live["State"].get("Running")
            for _, live, _ in states
        ):
            return [
                f"{names} already run{'s' if len(run.units) == 1 else ''} {run.ref}: {wait}; nothing else",
                restore,
            ]
        for unit, live, bad in states:
            if live is not None and bad is not None and not is_previous(live, run):
                return [f"fail: both {unit.name} and {unit.failed} exist; nothing touched"]
        if not local:
            if not s.pull:
                return [f"fail: previous image {run.ref} ({run.image_id[:19]}) is not local; nothing touched"]
            try:
                source = pullable(run, (*run.digests, run.ref) if run.image_id else (run.ref,))
            except Refused as exc:
                return [f"fail: {exc}"]
            expected = run.image_id[:19] or "there after it"
            lines.append(f"pull {source}; fail, touching nothing, if it is not {expected}")
        for unit, live, _ in states:
            if live is not None and is_previous(live, run):
                if not live["State"].get("Running"):
                    lines.append(f"start {unit.name} (already created from {run.ref})")
                continue
            if live is not None or unknown:
                grace = kept.stop_timeout(live, s.stop_timeout) if live else s.stop_timeout
                lines += [
                    f"stop {unit.name} (SIGTERM, {grace:g}s before SIGKILL)",
                    f"rename {unit.name} to {unit.failed} and keep it stopped (restart policy no)",
                ]
            lines += [
                f"create {unit.name} from {run.ref} with the {unit.config_from} container's configuration",
                f"start {unit.name}",
            ]
        if run.target.grouped:
            lines.append(
                f"once healthy: the kept containers leave {run.target.label} (copies without its labels)"
            )
        return [*lines, wait, restore]
