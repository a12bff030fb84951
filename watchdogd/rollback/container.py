"""The container step: back to the previous image, the bad container kept for forensics.

What is recreated. A snapshot holds a container's own ``docker run``
configuration: the inspect fields, minus what its image already supplies (an
env var, label, command... equal to the image's is left out). Recreating on
the previous image therefore lets that image bring its own defaults instead of
inheriting the new image's (``APP_VERSION=v2`` baked into v2 must not leak
into v1). The configuration used is the *previous* container's snapshot when
it has one: it is what last ran healthy on that image, and a deploy often
changes env or command along with the image. Without it (only the previous
image is known), the bad container's configuration is used with the previous
image. Anonymous volumes are not carried over: the new container gets fresh
ones, the bad container keeps its own.

Which image. ``P`` is an image watchdogd saw running for the service (its
snapshot has the image ID and ``RepoDigests``), started by that ID when its
tag now names other bytes; or, known by name alone, one the service's
``images`` allow-list matches, else it is not started at all. A missing image
is pulled only with ``pull: true`` and only from a repository ``images``
names (a recorded one by its digest first, then checked against its ID);
otherwise the step fails before it stops anything.

Every state a crash can leave is a starting point (``N`` is the service's
container name, ``F`` is ``N-failed-<deployment>``, ``P`` the previous image)::

    N runs P, running                -> check health; already_done when healthy
    N has P, created or exited       -> start it, wait until healthy
    N has another image, no F        -> (image check) stop, rename to F, create, start, wait
    N has another image, F exists    -> refuse: two bad candidates, nothing touched
    no N, F exists                   -> create, start, wait (the rename happened)
    no N, no F                       -> create, start, wait (nothing left to keep)

When ``P`` does not become healthy, its container is removed and ``F`` goes
back to ``N`` and is started; the step fails with the reason and P's last logs.
A crash in the middle of that restore (P removed, F not yet renamed back)
leaves "no N, F exists": the next run tries the rollback again, and restores
again if P is still not healthy.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from requests.exceptions import RequestException

from watchdogd.config.models import ContainerStepConfig
from watchdogd.imageref import allowed
from watchdogd.rollback.base import ContainerSnapshot, RollbackTarget, StepResult, StepStatus

log = structlog.get_logger("watchdogd.rollback.container")

Probe = Callable[[], Awaitable[bool]]
"""The service's health probe: True when the service answers as healthy."""

T = TypeVar("T")

POLL_INTERVAL = 0.1
"""How often container state is read while waiting: short, the inspect is cheap."""
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000
"""Bound on the logs quoted in a failure, so a chatty container cannot flood the journal."""

# Fields of ``Config`` an image may set: kept only where the container differs.
_IMAGE_FIELDS = ("Cmd", "Entrypoint", "WorkingDir", "User", "Healthcheck", "StopSignal")
# Fields of ``Config`` only a container has.
_CONTAINER_FIELDS = ("Tty", "OpenStdin", "StdinOnce", "StopTimeout")
_HOST_FIELDS = (
    "Binds", "Mounts", "VolumesFrom", "Tmpfs", "NetworkMode", "PortBindings", "PublishAllPorts",
    "ExtraHosts", "Dns", "DnsOptions", "DnsSearch", "Links", "RestartPolicy", "LogConfig",
    "Memory", "MemoryReservation", "MemorySwap", "MemorySwappiness", "NanoCpus", "CpuShares",
    "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems", "PidsLimit", "OomKillDisable", "Ulimits",
    "CapAdd", "CapDrop", "Privileged", "ReadonlyRootfs", "SecurityOpt", "Devices", "GroupAdd",
    "IpcMode", "PidMode", "UTSMode", "UsernsMode", "ShmSize", "Sysctls", "Init", "Runtime",
    "CgroupParent", "AutoRemove",
)  # fmt: skip
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _api(client: Any) -> Any:
    """The low-level API client of a ``docker.DockerClient`` (or the API client itself)."""
    return getattr(client, "api", client)


def _own_items(values: Mapping[str, Any] | None, image: Mapping[str, Any] | None) -> dict[str, Any]:
    image = image or {}
    return {k: v for k, v in (values or {}).items() if k not in image or image[k] != v}


def _snapshot_from(attrs: Mapping[str, Any], image: Mapping[str, Any], daemon_host: str) -> dict[str, Any]:
    cfg = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    img = image.get("Config") or {}
    out: dict[str, Any] = {}
    image_env = set(img.get("Env") or ())
    out["Env"] = [e for e in cfg.get("Env") or () if e not in image_env]
    out["Labels"] = _own_items(cfg.get("Labels"), img.get("Labels"))
    for key in _IMAGE_FIELDS:
        if cfg.get(key) != img.get(key):
            out[key] = cfg.get(key)
    if "Entrypoint" in out:
        # A new entrypoint resets the image's command: keep the command as the container had it.
        out["Cmd"] = cfg.get("Cmd")
    out["ExposedPorts"] = _own_items(cfg.get("ExposedPorts"), img.get("ExposedPorts"))
    bind_targets = {m.get("Destination") for m in attrs.get("Mounts") or () if m.get("Type") == "bind"}
    out["Volumes"] = {
        path: {} for path in _own_items(cfg.get("Volumes"), img.get("Volumes")) if path not in bind_targets
    }
    for key in _CONTAINER_FIELDS:
        if cfg.get(key) is not None:
            out[key] = cfg[key]
    # Docker fills the hostname in (short id, or the host's name on the host network): keep a chosen one.
    hostname = cfg.get("Hostname") or ""
    if hostname and not str(attrs.get("Id", "")).startswith(hostname) and hostname != daemon_host:
        out["Hostname"] = hostname
    if cfg.get("Domainname"):
        out["Domainname"] = cfg["Domainname"]
    host_config = {key: host[key] for key in _HOST_FIELDS if host.get(key) is not None}
    networks: dict[str, Any] = {}
    mode = str(host.get("NetworkMode") or "")
    if mode not in ("host", "none", "default", "bridge") and not mode.startswith("container:"):
        short_id = str(attrs.get("Id", ""))[:12]
        for net, endpoint in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).items():
            aliases = [a for a in (endpoint or {}).get("Aliases") or () if a != short_id]
            networks[net] = {"Aliases": aliases or None}
    return {
        "Config": {k: v for k, v in out.items() if v not in ({}, [])},
        "HostConfig": host_config,
        "Networks": networks,
    }


async def capture(client: Any, name: str) -> ContainerSnapshot:
    """The configuration of container ``name`` as it runs now (call it at deploy time)."""
    api = _api(client)
    attrs = await asyncio.to_thread(api.inspect_container, name)
    image = await asyncio.to_thread(api.inspect_image, attrs["Image"])
    info = await asyncio.to_thread(api.info)
    config = _snapshot_from(attrs, image, str(info.get("Name", "")))
    return ContainerSnapshot(
        name=str(attrs.get("Name", name)).lstrip("/"),
        image=str((attrs.get("Config") or {}).get("Image") or attrs["Image"]),
        image_id=str(attrs["Image"]),
        config=config,
        digests=tuple(str(d) for d in image.get("RepoDigests") or ()),
    )


def failed_name(name: str, deployment_id: str) -> str:
    """Where the bad container is kept: ``<name>-failed-<deployment>``, a valid container name."""
    return f"{name}-failed-{_NAME_UNSAFE.sub('-', deployment_id)}"


@dataclass
class _Run:
    """One run's facts and what it did, in order."""

    name: str
    failed: str
    ref: str
    image_id: str
    config: dict[str, Any]
    config_from: str
    images: tuple[str, ...] = ()
    """The service's allow-list: what may be started by name alone, and pulled."""
    digests: tuple[str, ...] = ()
    actions: list[str] = field(default_factory=list)

    def data(self, **extra: Any) -> dict[str, Any]:
        return {
            "container": self.name,
            "failed_container": self.failed,
            "image": self.ref,
            "image_id": self.image_id,
            "config_from": self.config_from,
            "actions": list(self.actions),
            **extra,
        }


class _Refused(Exception):
    """A reason to stop before touching anything (or anything more)."""


class ContainerStep:
    """Recreates the service's container from the previous image; see the module docstring."""

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
        try:
            attrs: dict[str, Any] = await self._call(self.api.inspect_container, ref)
        except NotFound:
            return None
        return attrs

    def _prepare(self, target: RollbackTarget) -> _Run | StepResult:
        """The run's facts, or the result when there is nothing to do or nothing to go on."""
        previous, current = target.previous, target.current
        if previous is None:
            return StepResult(
                "failed", "no snapshot of the previous container: the previous image is unknown"
            )
        if current is not None and current.image_id and current.image_id == previous.image_id:
            return StepResult("skipped", "the deploy kept the previous image: no container to roll back")
        name = target.config.container or (current.name if current else previous.name)
        if previous.config:
            config, source = previous.config, "previous"
        elif current is not None and current.config:
            config, source = current.config, "current"
        else:
            return StepResult("failed", "no configuration captured for the previous or the current container")
        if not previous.image_id and allowed(previous.image, target.config.images) is None:
            return StepResult(
                "failed",
                f"previous image {previous.image} never ran for {target.service} as far as watchdogd saw "
                f"and services.{target.service}.images does not allow it: not started, nothing touched",
            )
        failed = failed_name(name, target.deployment_id)
        return _Run(
            name,
            failed,
            previous.image,
            previous.image_id,
            config,
            source,
            target.config.images,
            previous.digests,
        )

    async def run(self, target: RollbackTarget) -> StepResult:
        run = self._prepare(target)
        if isinstance(run, StepResult):
            return run
        bound = log.bind(service=target.service, deployment=target.deployment_id, container=run.name)
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
        live = await self._inspect(run.name)
        kept = await self._inspect(run.failed)
        if live is None or not self._is_previous(live, run):
            if live is not None:
                if kept is not None:
                    raise _Refused(
                        f"both {run.name} ({live['Config'].get('Image')}) and {run.failed} exist: "
                        "refusing to guess which one is the bad container"
                    )
                current = target.current
                if current is not None and current.image_id and live["Image"] != current.image_id:
                    raise _Refused(
                        f"{run.name} runs {live['Config'].get('Image')} ({live['Image'][:19]}), neither the "
                        "deployed image nor the previous one: a newer deploy? nothing touched"
                    )
            await self._ensure_image(run, settings)
            if live is not None:
                await self._call(self.api.stop, live["Id"], timeout=math.ceil(settings.stop_timeout))
                run.actions.append(f"stopped {run.name}")
                await self._call(self.api.rename, live["Id"], run.failed)
                run.actions.append(f"renamed {run.name} to {run.failed}")
            try:
                live = await self._create(run)
            except (DockerException, RequestException) as exc:
                # The engine refused the previous container: the bad one is still better than none.
                explanation = getattr(exc, "explanation", None) or exc
                return await self._put_back(run, f"creating {run.name} from {run.ref} failed: {explanation}")
        if not live["State"].get("Running"):
            await self._call(self.api.start, live["Id"])
            run.actions.append(f"started {run.name}")
        healthy, why = await self._wait_healthy(live["Id"], settings)
        if healthy:
            status: StepStatus = "done" if run.actions else "already_done"
            detail = f"{run.name} runs {run.ref}" + (f"; {why}" if why else "")
            return StepResult(status, detail, run.data(container_id=live["Id"]))
        return await self._restore(run, live["Id"], why)

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

    async def _create(self, run: _Run) -> dict[str, Any]:
        networks: dict[str, Any] = dict(run.config.get("Networks") or {})
        host = dict(run.config.get("HostConfig") or {})
        body: dict[str, Any] = {**(run.config.get("Config") or {}), "Image": run.ref, "HostConfig": host}
        primary = host.get("NetworkMode")
        if primary in networks:
            body["NetworkingConfig"] = {"EndpointsConfig": {primary: networks.pop(primary)}}
        created = await self._call(self.api.create_container_from_config, body, run.name)
        run.actions.append(f"created {run.name} from {run.ref} ({run.config_from} configuration)")
        for net, endpoint in networks.items():
            await self._call(
                self.api.connect_container_to_network, created["Id"], net, aliases=endpoint.get("Aliases")
            )
        attrs = await self._inspect(created["Id"])
        if attrs is None:
            raise _Refused(f"{run.name} vanished right after it was created")
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
                up = (datetime.now(UTC) - _parse_time(state.get("StartedAt", ""))).total_seconds()
                if up >= settings.settle:
                    return True, f"running for {settings.settle:g}s"
                last = f"running for {up:.1f}s of {settings.settle:g}s"
            if loop.time() >= deadline:
                return False, f"not healthy within {settings.healthy_timeout:g}s ({last})"
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))

    async def _restore(self, run: _Run, new_id: str, why: str) -> StepResult:
        """Remove the previous image's container and put the bad one back, running.

        Without a kept bad container there is nothing better to run: the
        previous image's container is left as it is, and the step fails.
        """
        logs = await self._tail(new_id)
        reason = f"previous image {run.ref} did not become healthy: {why}"
        kept = await self._inspect(run.failed)
        if kept is None:
            reason += f"; no {run.failed} to put back, {run.name} left as it is"
        else:
            await self._call(self.api.remove_container, new_id, force=True)
            run.actions.append(f"removed {run.name} ({run.ref}, not healthy)")
            reason = (await self._put_back(run, reason)).detail
        if logs:
            reason += f"\n--- last logs of {run.ref} ---\n{logs}"
        return StepResult("failed", reason, run.data(logs=logs))

    async def _put_back(self, run: _Run, reason: str) -> StepResult:
        """Rename the kept bad container back to the service's name and start it; the step failed."""
        kept = await self._inspect(run.failed)
        if kept is None:
            return StepResult("failed", f"{reason}; no {run.failed} to put back", run.data())
        await self._call(self.api.rename, kept["Id"], run.name)
        run.actions.append(f"renamed {run.failed} back to {run.name}")
        await self._call(self.api.start, kept["Id"])
        run.actions.append(f"started {run.name} (the deployed image) again")
        reason += f"; the deployed container is back under {run.name} and running"
        return StepResult("failed", reason, run.data())

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
        wait = f"wait up to {s.healthy_timeout:g}s until {run.name} is healthy: {check}"
        restore = f"if it is not healthy: remove it, rename {run.failed} back to {run.name} and start it"
        try:
            live = await self._inspect(run.name)
            kept = await self._inspect(run.failed)
            if run.image_id:
                local = await self._image_id(run.ref) == run.image_id or (
                    await self._image_id(run.image_id) == run.image_id
                )
            else:
                local = await self._image_id(run.ref) is not None
        except (DockerException, RequestException) as exc:
            live, kept, local, unknown = None, None, True, True
            lines = [
                f"(Docker engine unreachable: {type(exc).__name__}; assuming {run.name} runs the deploy)"
            ]
        else:
            lines, unknown = [], False
        if live is not None and self._is_previous(live, run):
            if live["State"].get("Running"):
                return [f"{run.name} already runs {run.ref}: {wait}; nothing else", restore]
            return [f"start {run.name} (already created from {run.ref})", wait, restore]
        if live is not None and kept is not None:
            return [f"fail: both {run.name} and {run.failed} exist; nothing touched"]
        if not local:
            if not s.pull:
                return [f"fail: previous image {run.ref} ({run.image_id[:19]}) is not local; nothing touched"]
            try:
                source = self._pullable(run, (*run.digests, run.ref) if run.image_id else (run.ref,))
            except _Refused as exc:
                return [f"fail: {exc}"]
            expected = run.image_id[:19] or "there after it"
            lines.append(f"pull {source}; fail, touching nothing, if it is not {expected}")
        if live is not None or unknown:
            lines += [
                f"stop {run.name} (SIGTERM, {s.stop_timeout:g}s before SIGKILL)",
                f"rename {run.name} to {run.failed} and keep it stopped",
            ]
        return [
            *lines,
            f"create {run.name} from {run.ref} with the {run.config_from} container's configuration",
            f"start {run.name}",
            wait,
            restore,
        ]


def _parse_time(text: str) -> datetime:
    """Docker's RFC 3339 time with nanoseconds, as an aware datetime (epoch when unparseable)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return datetime.fromtimestamp(0, UTC)
    base, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")
