"""The bad containers a rollback keeps for forensics, and what keeping them safely takes.

A kept container is stopped, renamed ``<name>-failed-<deployment>`` and has
restart policy ``no``, so an engine restart does not bring it back beside the
rolled-back one. Two things cannot be changed on an existing container, so the
container is replaced by a copy: its filesystem committed to an image, a
container created from it under the kept name with the same host
configuration, and the original removed. That copy is made

- before the stop of a container with ``AutoRemove`` (the stop would remove it);
- after a successful rollback of a Compose service, whose containers Compose
  finds by label: the copy's ``com.docker.compose.*`` labels are emptied (a
  label cannot be removed from what the committed image carries; an empty
  value matches no project) and their values kept under
  ``org.watchdogd.kept.com.docker.compose.*``.

The copy has the original's files and configuration, not its logs: the last
lines are quoted in the step's result before the original goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from docker.errors import NotFound

from watchdogd.rollback.targets import COMPOSE, kept_labels

COPY_SUFFIX = "-copy"


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def inspect(api: Any, ref: str) -> dict[str, Any] | None:
    try:
        attrs: dict[str, Any] = await _call(api.inspect_container, ref)
    except NotFound:
        return None
    return attrs


def stop_timeout(attrs: Mapping[str, Any], default: float) -> int:
    """The container's own ``StopTimeout`` (``stop_grace_period`` in Compose) when it has one."""
    own = (attrs.get("Config") or {}).get("StopTimeout")
    return int(own) if isinstance(own, int) and own >= 0 else int(-(-default // 1))


async def never_restart(api: Any, container_id: str) -> None:
    await _call(api.update_container, container_id, restart_policy={"Name": "no"})


async def copy(api: Any, attrs: Mapping[str, Any], name: str, *, leave_group: bool) -> str:
    """A stopped copy of the container ``attrs`` under ``name``: files, configuration, no auto-remove."""
    cfg = attrs.get("Config") or {}
    # Untagged: the copy keeps its image from prune; removing a last tag would take --force, which
    # deletes the image under the copy, so no tag is made at all.
    committed = await _call(api.commit, attrs["Id"])
    host = {k: v for k, v in (attrs.get("HostConfig") or {}).items() if v not in (None, "", [], {})}
    host["AutoRemove"] = False
    host["RestartPolicy"] = {"Name": "no"}
    host.pop("ConsoleSize", None)
    labels = dict(cfg.get("Labels") or {})
    if leave_group:
        labels = {**kept_labels(labels), **{k: "" for k in labels if k.startswith(COMPOSE)}}
    body = {
        "Image": committed["Id"],
        "Labels": labels,
        "Hostname": cfg.get("Hostname"),
        "HostConfig": host,
    }
    created = await _call(api.create_container_from_config, body, name)
    return str(created["Id"])


async def leave_group(api: Any, failed: str) -> str | None:
    """Replace the kept container ``failed`` by a copy out of its Compose project; resumable.

    Returns what was done, or None when it was already out of the project.
    """
    temp = failed + COPY_SUFFIX
    kept = await inspect(api, failed)
    made = await inspect(api, temp)
    if kept is None:
        if made is not None:  # the original was removed, the rename did not happen
            await _call(api.rename, made["Id"], failed)
            return f"renamed {temp} to {failed}"
        return None
    if not _member(kept):
        if made is not None:
            await _call(api.remove_container, made["Id"], force=True)
        return None
    if made is not None:
        await _call(api.remove_container, made["Id"], force=True)
    copy_id = await copy(api, kept, temp, leave_group=True)
    await _call(api.remove_container, kept["Id"], force=True)
    await _call(api.rename, copy_id, failed)
    return f"replaced {failed} by a copy out of its Compose project"


def _member(attrs: Mapping[str, Any]) -> bool:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return any(v for k, v in labels.items() if k.startswith(COMPOSE))
