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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from docker.errors import APIError, DockerException, ImageNotFound
from requests.exceptions import RequestException

from watchdogd.config.models import ContainerStepConfig
from watchdogd.imageref import allowed
from watchdogd.rollback import kept
from watchdogd.rollback.base import ContainerSnapshot, RollbackTarget, StepResult, StepStatus
from watchdogd.rollback.recreate import capture as capture_one
from watchdogd.rollback.recreate import create_body, parse_time, snapshot_of
from watchdogd.rollback.targets import (
    ComposeService,
    OneContainer,
    SwarmService,
    Target,
    failed_name,
    target_of,
)

__all__ = ["ContainerStep", "capture", "capture_target", "failed_name"]

log = structlog.get_logger("watchdogd.rollback.container")

Probe = Callable[[], Awaitable[bool]]
"""The service's health probe: True when the service answers as healthy."""

T = TypeVar("T")

POLL_INTERVAL = 0.1
"""How often container state is read while waiting: short, the inspect is cheap."""
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000
"""Bound on the logs quoted in a failure, so a chatty container cannot flood the journal."""


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


@dataclass
class _Run:
    """One run's facts and what it did, in order."""

    units: list[_Unit]
    target: OneContainer | ComposeService
    ref: str
    image_id: str
    images: tuple[str, ...] = ()
    """The service's allow-list: what may be started by name alone, and pulled."""
    digests: tuple[str, ...] = ()
    deployment_id: str = ""
    actions: list[str] = field(default_factory=list)
    extras: list[_Unit] = field(default_factory=list)
    """Bad containers beyond the previous replicas (a scaled-up deploy), kept too."""
    logs: dict[str, str] = field(default_factory=dict)
    """Last logs of bad containers replaced by a copy."""
    current: tuple[ContainerSnapshot, ...] = ()
    """The bad containers as deployed."""

    def data(self, **extra: Any) -> dict[str, Any]:
        first = self.units[0]
        out = {
            "container": first.name,
            "failed_container": first.failed,
            "image": self.ref,
            "image_id": self.image_id,
            "config_from": first.config_from,
            "actions": list(self.actions),
            **extra,
        }
        if len(self.units) > 1 or self.extras:
            out["containers"] = [u.name for u in self.units]
            out["failed_containers"] = [u.failed for u in (*self.units, *self.extras)]
        if self.logs:
            out["kept_logs"] = dict(self.logs)
        return out


class _Refused(Exception):
    """A reason to stop before touching anything (or anything more)."""


@dataclass
class _Unit:
    """One container of the target: its name, where the bad one is kept, what recreates it."""

    name: str
    failed: str
    config: dict[str, Any]
    config_from: str
    live: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    """The bad container's restart policy, given back if it is put back."""


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

    def _prepare(self, target: RollbackTarget) -> _Run | StepResult:
        """The run's facts, or the result when there is nothing to do or nothing to go on."""
        previous, current = target.previous, target.current
        if previous is None:
            return StepResult(
                "failed", "no snapshot of the previous container: the previous image is unknown"
            )
        if current is not None and current.image_id and current.image_id == previous.image_id:
            return StepResult("skipped", "the deploy kept the previous image: no container to roll back")
        if not previous.image_id and allowed(previous.image, target.config.images) is None:
            return StepResult(
                "failed",
                f"previous image {previous.image} never ran for {target.service} as far as watchdogd saw "
                f"and services.{target.service}.images does not allow it: not started, nothing touched",
            )
        where = target_of(target.config)
        if isinstance(where, SwarmService):
            return StepResult("failed", f"{where.label}: rolled back by Swarm, not by recreating containers")
        units: list[_Unit] = []
        if isinstance(where, ComposeService):
            pairs = [(s.name, s) for s in previous.containers if s.config]
            if not pairs and current is not None:
                pairs = [(s.name, s) for s in current.containers if s.config]
                source = "current"
            else:
                source = "previous"
            if not pairs:
                return StepResult(
                    "failed", "no configuration captured for the previous or the current replicas"
                )
            units = [_Unit(n, failed_name(n, target.deployment_id), s.config, source) for n, s in pairs]
        else:
            name = target.config.container or (current.name if current else previous.name)
            if previous.config:
                config, source = previous.config, "previous"
            elif current is not None and current.config:
                config, source = current.config, "current"
            else:
                return StepResult(
                    "failed", "no configuration captured for the previous or the current container"
                )
            units = [_Unit(name, failed_name(name, target.deployment_id), config, source)]
        return _Run(
            units,
            where or OneContainer(units[0].name),
            previous.image,
            previous.image_id,
            target.config.images,
            previous.digests,
            deployment_id=target.deployment_id,
            current=current.containers if current is not None else (),
        )

    async def run(self, target: RollbackTarget) -> StepResult:
        run = self._prepare(target)
        if isinstance(run, StepResult):
            return run
        bound = log.bind(service=target.service, deployment=target.deployment_id, target=run.target.label)
        try:
            result = await self._run(run, target)
        except _Refused as exc:
            result = StepResult("failed", str(exc), run.data())
        except (DockerException, RequestException) as exc:
            result = StepResult("failed", f"Docker engine error: {type(exc).__name__}: {exc}", run.data())
        bound.info("container_step", status=result.status, detail=result.detail, actions=run.actions)
        return result

    async def _run(self, run: _Run, target: RollbackTarget) -> StepResult:
        settings = self._settings(target)
        todo: list[_Unit] = []
        for unit in run.units:
            live = await self._inspect(unit.name)
            if live is not None and self._is_previous(live, run):
                unit.live = live
                continue
            if live is not None:
                if await self._inspect(unit.failed) is not None:
                    raise _Refused(
                        f"both {unit.name} ({live['Config'].get('Image')}) and {unit.failed} exist: "
                        "refusing to guess which one is the bad container"
                    )
                current = target.current
                deployed = {c.image_id for c in current.containers} if current is not None else set()
                if deployed and "" not in deployed and live["Image"] not in deployed:
                    raise _Refused(
                        f"{unit.name} runs {live['Config'].get('Image')} ({live['Image'][:19]}), neither the "
                        "deployed image nor the previous one: a newer deploy? nothing touched"
                    )
            todo.append(unit)
        names = {u.name for u in run.units}
        extras = [n for n in await run.target.names(self.api) if n not in names] if run.target.grouped else []
        if todo:
            await self._ensure_image(run, settings)
        started: set[str] = set()
        try:
            for unit in todo:  # one replica after the other: the others serve meanwhile
                live = await self._inspect(unit.name)
                if live is not None:
                    await self._keep(run, unit, live, settings)
                unit.live = await self._create(run, unit)
                await self._call(self.api.start, unit.live["Id"])
                run.actions.append(f"started {unit.name}")
                started.add(unit.name)
            for name in extras:
                extra = _Unit(name, failed_name(name, run.deployment_id), {}, "")
                live = await self._inspect(name)
                if live is not None and not self._is_previous(live, run):
                    await self._keep(run, extra, live, settings)
                    run.extras.append(extra)
            for unit in run.units:
                assert unit.live is not None
                if unit.name not in started and not unit.live["State"].get("Running"):
                    await self._call(self.api.start, unit.live["Id"])
                    run.actions.append(f"started {unit.name}")
        except (DockerException, RequestException) as exc:
            # The engine refused a previous container: the bad ones are still better than none.
            explanation = getattr(exc, "explanation", None) or exc
            return await self._restore(run, f"recreating from {run.ref} failed: {explanation}", "")
        verdicts = await asyncio.gather(
            *(self._wait_healthy(str(u.live["Id"]), settings) for u in run.units if u.live is not None)
        )
        bad = [(u, why) for u, (ok, why) in zip(run.units, verdicts, strict=True) if not ok]
        if bad:
            unit, why = bad[0]
            assert unit.live is not None
            logs = await self._tail(str(unit.live["Id"]))
            reason = f"previous image {run.ref} did not become healthy in {unit.name}: {why}"
            return await self._restore(run, reason, logs)
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

    async def _keep(
        self, run: _Run, unit: _Unit, live: dict[str, Any], settings: ContainerStepConfig
    ) -> None:
        """Stop the bad container and keep it as ``unit.failed``, never restarted by the engine."""
        unit.policy = (live.get("HostConfig") or {}).get("RestartPolicy")
        timeout = kept.stop_timeout(live, settings.stop_timeout)
        if (live.get("HostConfig") or {}).get("AutoRemove"):
            run.logs[unit.name] = await self._tail(live["Id"])
            await kept.copy(self.api, live, unit.failed, leave_group=False)
            run.actions.append(f"copied {unit.name} to {unit.failed} (it removes itself when stopped)")
            await self._call(self.api.stop, live["Id"], timeout=timeout)
            run.actions.append(f"stopped {unit.name}")
            await self._gone(live["Id"])
            return
        await self._call(self.api.stop, live["Id"], timeout=timeout)
        run.actions.append(f"stopped {unit.name}")
        await kept.never_restart(self.api, live["Id"])
        await self._call(self.api.rename, live["Id"], unit.failed)
        run.actions.append(f"renamed {unit.name} to {unit.failed} (restart policy no)")

    async def _gone(self, container_id: str) -> None:
        """Wait for an auto-removed container to be gone, so its name is free (bounded)."""
        for _ in range(100):
            if await self._inspect(container_id) is None:
                return
            await asyncio.sleep(POLL_INTERVAL)
        await self._call(self.api.remove_container, container_id, force=True)

    def _is_previous(self, attrs: Mapping[str, Any], run: _Run) -> bool:
        if run.image_id:
            return bool(attrs.get("Image") == run.image_id)
        return bool((attrs.get("Config") or {}).get("Image") == run.ref)

    async def _ensure_image(self, run: _Run, settings: ContainerStepConfig) -> None:
        """Settle which reference creates the container; refuse when the previous image is gone.

        An image that ran is started by its ID when its name now names other bytes
        (the tag moved). A pull happens only with ``pull: true`` and only from a
        repository the service's ``images`` names: a recorded image by one of its
        digests (the same bytes) or its name, then checked against its ID.
        """
        found = await self._image_id(run.ref)
        if run.image_id and found != run.image_id:
            # The tag may have moved (``app:latest`` now names the new image): use the id itself.
            if await self._image_id(run.image_id) == run.image_id:
                run.ref = run.image_id
                return
            where = f"tag {run.ref} now names {found[:19]}" if found else f"{run.ref} is not local"
            gone = f"previous image {run.image_id[:19]} not available ({where})"
            if not settings.pull:
                raise _Refused(f"{gone}: nothing touched")
            source = self._pullable(run, (*run.digests, run.ref))
            await self._pull(run, source)
            if await self._image_id(run.image_id) != run.image_id:
                raise _Refused(f"{gone}; {source} pulled is not {run.image_id[:19]}: nothing touched")
            if source != run.ref:  # pulled by digest: the ID names those bytes, the tag may not
                run.ref = run.image_id
        elif not run.image_id and found is None:
            if settings.pull:
                await self._pull(run, self._pullable(run, (run.ref,)))
                if await self._image_id(run.ref) is not None:
                    return
            raise _Refused(f"previous image {run.ref} not available: nothing touched")

    def _pullable(self, run: _Run, refs: tuple[str, ...]) -> str:
        """The first of ``refs`` the allow-list lets watchdogd pull; refuse when none is."""
        for ref in refs:
            if allowed(ref, run.images) is not None:
                return ref
        raise _Refused(
            f"previous image {run.ref} is not local and its repository is not in the service's images: "
            "not pulled from a registry the config does not name; nothing touched"
        )

    async def _pull(self, run: _Run, ref: str) -> None:
        try:
            await self._call(self.api.pull, ref)
        except APIError as exc:
            raise _Refused(f"pulling previous image {ref} failed: {exc.explanation or exc}") from exc
        run.actions.append(f"pulled {ref}")

    async def _image_id(self, ref: str) -> str | None:
        try:
            attrs = await self._call(self.api.inspect_image, ref)
        except ImageNotFound:
            return None
        return str(attrs["Id"])

    async def _create(self, run: _Run, unit: _Unit) -> dict[str, Any]:
        """Create ``unit``'s container from the previous image; a half-made one is removed on failure."""
        body, networks = create_body(unit.config, run.ref)
        created = await self._call(self.api.create_container_from_config, body, unit.name)
        run.actions.append(f"created {unit.name} from {run.ref} ({unit.config_from} configuration)")
        try:
            for net, endpoint in networks.items():
                await self._call(
                    self.api.connect_container_to_network,
                    created["Id"],
                    net,
                    ipv4_address=(endpoint.get("IPAMConfig") or {}).get("IPv4Address"),
                    ipv6_address=(endpoint.get("IPAMConfig") or {}).get("IPv6Address"),
                    aliases=endpoint.get("Aliases"),
                    links=endpoint.get("Links"),
                    driver_opt=endpoint.get("DriverOpts"),
                )
        except (DockerException, RequestException):
            await self._call(self.api.remove_container, created["Id"], force=True)
            run.actions.append(f"removed {unit.name} (half-made)")
            raise
        attrs = await self._inspect(created["Id"])
        if attrs is None:
            raise _Refused(f"{unit.name} vanished right after it was created")
        return attrs

    async def _wait_healthy(self, container_id: str, settings: ContainerStepConfig) -> tuple[bool, str]:
        """Healthy by its Docker healthcheck, else the probe, else running ``settle`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.healthy_timeout
        last = "no check yet"
        while True:
            attrs = await self._inspect(container_id)
            if attrs is None:
                return False, "the container was removed"
            state = attrs["State"]
            if not state.get("Running") or state.get("Restarting"):
                return (
                    False,
                    f"it exited with code {state.get('ExitCode')} {state.get('Error') or ''}".strip(),
                )
            health = state.get("Health")
            if health is not None:
                status = health.get("Status")
                if status == "healthy":
                    return True, "healthcheck healthy"
                if status == "unhealthy":
                    output = ((health.get("Log") or [{}])[-1].get("Output") or "").strip()
                    return False, f"its healthcheck is unhealthy: {output[:200]}"
                last = f"healthcheck {status}"
            elif self.probe is not None:
                remaining = max(0.0, deadline - loop.time())
                try:
                    async with asyncio.timeout(remaining):
                        if await self.probe():
                            return True, "health probe passed"
                    last = "health probe failed"
                except TimeoutError:
                    last = "health probe did not answer"
                except Exception as exc:  # the probe is the caller's code; its failure is a "no"
                    last = f"health probe raised {type(exc).__name__}: {exc}"
            else:
                up = (datetime.now(UTC) - parse_time(state.get("StartedAt", ""))).total_seconds()
                if up >= settings.settle:
                    return True, f"running for {settings.settle:g}s"
                last = f"running for {up:.1f}s of {settings.settle:g}s"
            if loop.time() >= deadline:
                return False, f"not healthy within {settings.healthy_timeout:g}s ({last})"
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))

    async def _restore(self, run: _Run, reason: str, logs: str) -> StepResult:
        """Remove what the step made and put every kept bad container back, running; the step failed.

        A container is removed only when its kept bad one is there to take its
        place: without it there is nothing better to run, and it is left as it is.
        """
        notes: list[str] = []
        for unit in (*run.units, *run.extras):
            bad = await self._inspect(unit.failed)
            if bad is None:
                if unit in run.units:
                    notes.append(f"no {unit.failed} to put back, {unit.name} left as it is")
                continue
            try:
                made = await self._inspect(unit.name)
                if made is not None:
                    await self._call(self.api.remove_container, made["Id"], force=True)
                    run.actions.append(f"removed {unit.name} ({run.ref})")
                await self._call(self.api.rename, bad["Id"], unit.name)
                policy = unit.policy or _policy_of(unit, run)
                if policy and policy.get("Name") not in (None, "", "no"):
                    await self._call(self.api.update_container, bad["Id"], restart_policy=policy)
                await self._call(self.api.start, bad["Id"])
            except (DockerException, RequestException) as exc:
                explanation = getattr(exc, "explanation", None) or exc
                notes.append(f"putting {unit.failed} back as {unit.name} failed too: {explanation}")
                continue
            run.actions.append(f"renamed {unit.failed} back to {unit.name} and started it")
        back = [
            u.name for u in (*run.units, *run.extras) if f"renamed {u.failed} back" in " ".join(run.actions)
        ]
        if back:
            notes.append(
                f"the deployed container{'s are' if len(back) > 1 else ' is'} back and running: "
                + ", ".join(back)
            )
        reason = "; ".join([reason, *notes])
        if logs:
            reason += f"\n--- last logs of {run.ref} ---\n{logs}"
        return StepResult("failed", reason, run.data(logs=logs) if logs else run.data())

    async def _tail(self, container_id: str) -> str:
        raw = await self._call(self.api.logs, container_id, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        text = bytes(raw).decode("utf-8", "replace").strip()
        return text[-LOG_TAIL_CHARS:]

    async def describe(self, target: RollbackTarget) -> list[str]:
        """What ``run`` would do from the state Docker is in now; reads, never changes anything."""
        run = self._prepare(target)
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
                local = await self._image_id(run.ref) == run.image_id or (
                    await self._image_id(run.image_id) == run.image_id
                )
            else:
                local = await self._image_id(run.ref) is not None
            unknown = False
        except (DockerException, RequestException) as exc:
            states, local, unknown = [(u, None, None) for u in run.units], True, True
            lines.append(
                f"(Docker engine unreachable: {type(exc).__name__}; assuming {names} runs the deploy)"
            )
        if all(
            live is not None and self._is_previous(live, run) and live["State"].get("Running")
            for _, live, _ in states
        ):
            return [
                f"{names} already run{'s' if len(run.units) == 1 else ''} {run.ref}: {wait}; nothing else",
                restore,
            ]
        for unit, live, bad in states:
            if live is not None and bad is not None and not self._is_previous(live, run):
                return [f"fail: both {unit.name} and {unit.failed} exist; nothing touched"]
        if not local:
            if not s.pull:
                return [f"fail: previous image {run.ref} ({run.image_id[:19]}) is not local; nothing touched"]
            try:
                source = self._pullable(run, (*run.digests, run.ref) if run.image_id else (run.ref,))
            except _Refused as exc:
                return [f"fail: {exc}"]
            expected = run.image_id[:19] or "there after it"
            lines.append(f"pull {source}; fail, touching nothing, if it is not {expected}")
        for unit, live, _ in states:
            if live is not None and self._is_previous(live, run):
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


def _policy_of(unit: _Unit, run: _Run) -> dict[str, Any] | None:
    """The restart policy a bad container was deployed with (from its snapshot), to give it back."""
    for snap in run.current:
        if snap.name == unit.name:
            policy = (snap.config.get("HostConfig") or {}).get("RestartPolicy")
            return dict(policy) if isinstance(policy, dict) else None
    return None
