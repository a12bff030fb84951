"""A container's own ``docker run`` configuration: captured from inspect, given back to create.

A snapshot holds what the container was created with beyond what its image
supplies: ``Config`` fields equal to the image's (an env var, label, command,
healthcheck...) are left out, so a container recreated on another image gets
that image's own defaults (``APP_VERSION=v2`` baked into v2 must not leak into
v1). ``HostConfig`` is kept whole, less the fields left at their zero value
(what the engine defaults to anyway): a setting this module does not know of
still comes back. Each network's endpoint settings (static addresses, aliases,
links, driver options) are kept and given back on create (the primary network)
or connect (the others).

Documented differences after a recreate: the container's ID, creation time and
image; a generated hostname (a chosen one is kept); the alias Docker adds from
the short ID; ``container:ID`` network/IPC/PID modes are kept as
``container:NAME`` (an ID goes stale when that container is recreated) and the
hostname is then left to the engine, which refuses one. Anonymous volumes are
reattached by their name, so their data comes back with them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from watchdogd.model import ContainerSnapshot

# Fields of ``Config`` an image may set: kept only where the container differs.
IMAGE_FIELDS = ("Cmd", "Entrypoint", "WorkingDir", "User", "Healthcheck", "StopSignal", "Shell")
# Fields of ``Config`` only a container has.
CONTAINER_FIELDS = ("Tty", "OpenStdin", "StdinOnce", "StopTimeout", "MacAddress", "AttachStdin")
# ``HostConfig`` fields the engine fills in itself, or that name this container only.
HOST_SKIPPED = frozenset({"ContainerIDFile", "ConsoleSize"})
NAMESPACE_MODES = ("NetworkMode", "IpcMode", "PidMode")
ENDPOINT_FIELDS = ("IPAMConfig", "Aliases", "Links", "DriverOpts")
_ANONYMOUS = re.compile(r"[0-9a-f]{64}")


def _own_items(values: Mapping[str, Any] | None, image: Mapping[str, Any] | None) -> dict[str, Any]:
    image = image or {}
    return {k: v for k, v in (values or {}).items() if k not in image or image[k] != v}


def _zero(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def snapshot_from(
    attrs: Mapping[str, Any], image: Mapping[str, Any], daemon_host: str, names: Mapping[str, str]
) -> dict[str, Any]:
    """The snapshot ``config`` of a container; ``names`` maps container IDs to names (namespace modes)."""
    cfg = attrs.get("Config") or {}
    host = dict(attrs.get("HostConfig") or {})
    img = image.get("Config") or {}
    out: dict[str, Any] = {}
    image_env = set(img.get("Env") or ())
    out["Env"] = [e for e in cfg.get("Env") or () if e not in image_env]
    out["Labels"] = _own_items(cfg.get("Labels"), img.get("Labels"))
    for key in IMAGE_FIELDS:
        if cfg.get(key) != img.get(key):
            out[key] = cfg.get(key)
    if "Entrypoint" in out:
        # A new entrypoint resets the image's command: keep the command as the container had it.
        out["Cmd"] = cfg.get("Cmd")
    out["ExposedPorts"] = _own_items(cfg.get("ExposedPorts"), img.get("ExposedPorts"))
    mounts = list(attrs.get("Mounts") or ())
    bind_targets = {m.get("Destination") for m in mounts if m.get("Type") == "bind"}
    out["Volumes"] = {
        path: {} for path in _own_items(cfg.get("Volumes"), img.get("Volumes")) if path not in bind_targets
    }
    for key in CONTAINER_FIELDS:
        if not _zero(cfg.get(key)):
            out[key] = cfg[key]
    for key in NAMESPACE_MODES:
        mode = str(host.get(key) or "")
        if mode.startswith("container:"):
            ref = mode.removeprefix("container:")
            host[key] = f"container:{names.get(ref, ref)}"
    shared_uts = str(host.get("NetworkMode") or "").startswith("container:")
    # Docker fills the hostname in (short id, or the host's name on the host network): keep a chosen one.
    hostname = cfg.get("Hostname") or ""
    chosen = not str(attrs.get("Id", "")).startswith(hostname) and hostname != daemon_host
    if hostname and chosen and not shared_uts:
        out["Hostname"] = hostname
    if cfg.get("Domainname") and not shared_uts:
        out["Domainname"] = cfg["Domainname"]
    host_config = {k: v for k, v in host.items() if k not in HOST_SKIPPED and not _zero(v)}
    _reattach_anonymous(host_config, mounts)
    networks: dict[str, Any] = {}
    mode = str(host.get("NetworkMode") or "")
    if mode not in ("host", "none", "default", "bridge") and not mode.startswith("container:"):
        short_id = str(attrs.get("Id", ""))[:12]
        for net, endpoint in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).items():
            kept = {k: (endpoint or {}).get(k) for k in ENDPOINT_FIELDS}
            kept["Aliases"] = [a for a in kept.get("Aliases") or () if a != short_id] or None
            networks[net] = {k: v for k, v in kept.items() if not _zero(v)}
    return {
        "Config": {k: v for k, v in out.items() if v not in ({}, [])},
        "HostConfig": host_config,
        "Networks": networks,
    }


def _reattach_anonymous(host_config: dict[str, Any], mounts: list[Mapping[str, Any]]) -> None:
    """Anonymous volumes become binds by their name: the recreated container gets their data back."""
    taken = {str(b).split(":")[1] for b in host_config.get("Binds") or () if ":" in str(b)}
    taken |= {str(m.get("Target")) for m in host_config.get("Mounts") or ()}
    binds = list(host_config.get("Binds") or ())
    for mount in mounts:
        name = str(mount.get("Name") or "")
        dest = str(mount.get("Destination") or "")
        if mount.get("Type") == "volume" and _ANONYMOUS.fullmatch(name) and dest not in taken:
            binds.append(f"{name}:{dest}" + ("" if mount.get("RW", True) else ":ro"))
    if binds:
        host_config["Binds"] = binds


def create_body(config: Mapping[str, Any], ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the create request's body, the networks to connect after create) for ``config`` on ``ref``."""
    networks: dict[str, Any] = dict(config.get("Networks") or {})
    host = dict(config.get("HostConfig") or {})
    body: dict[str, Any] = {**(config.get("Config") or {}), "Image": ref, "HostConfig": host}
    primary = host.get("NetworkMode")
    if primary in networks:
        body["NetworkingConfig"] = {"EndpointsConfig": {primary: networks.pop(primary)}}
    return body, networks


async def capture(api: Any, name: str) -> ContainerSnapshot:
    """The configuration of container ``name`` as it runs now (call it at deploy time)."""
    attrs = await asyncio.to_thread(api.inspect_container, name)
    return await snapshot_of(api, attrs)


async def snapshot_of(api: Any, attrs: Mapping[str, Any]) -> ContainerSnapshot:
    image = await asyncio.to_thread(api.inspect_image, attrs["Image"])
    info = await asyncio.to_thread(api.info)
    names: dict[str, str] = {}
    for key in NAMESPACE_MODES:
        mode = str((attrs.get("HostConfig") or {}).get(key) or "")
        if mode.startswith("container:"):
            ref = mode.removeprefix("container:")
            try:
                other = await asyncio.to_thread(api.inspect_container, ref)
            except Exception:  # gone: the mode is kept as it was written
                continue
            names[ref] = str(other.get("Name", ref)).lstrip("/")
    config = snapshot_from(attrs, image, str(info.get("Name", "")), names)
    return ContainerSnapshot(
        name=str(attrs.get("Name", "")).lstrip("/"),
        image=str((attrs.get("Config") or {}).get("Image") or attrs["Image"]),
        image_id=str(attrs["Image"]),
        config=config,
        digests=tuple(str(d) for d in image.get("RepoDigests") or ()),
    )


def parse_time(text: str) -> datetime:
    """Docker's RFC 3339 time with nanoseconds, as an aware datetime (epoch when unparseable)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return datetime.fromtimestamp(0, UTC)
    base, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")
