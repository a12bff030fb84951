"""A Docker Swarm service as a rollback sees it: its spec, the spec before it, where an update stands.

A service's snapshot is a :class:`ContainerSnapshot` named after the service:
``image`` is its spec's image without the digest Swarm may have pinned,
``image_id`` the spec's image exactly as written (with that digest), which is
what tells one deploy from another; ``config["swarm"]`` keeps the service's
ID, spec version, whole spec and previous spec, and its ``UpdateStatus``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from docker.errors import NotFound

from watchdogd.imageref import same_image_name
from watchdogd.model import ContainerSnapshot

SWARM = "swarm"
ROLLING_BACK = ("rollback_started", "rollback_paused", "rollback_completed")
"""``UpdateStatus.State`` values of a rollback: Swarm's own, or one requested through the API."""
IN_PROGRESS = ("updating", "rollback_started")


def image_of(spec: Mapping[str, Any] | None) -> str:
    """The image a service spec runs (``repo:tag@sha256:...`` when Swarm pinned its digest)."""
    template = (spec or {}).get("TaskTemplate") or {}
    return str((template.get("ContainerSpec") or {}).get("Image") or "")


def same_image(a: str, b: str) -> bool:
    """Do two spec images name one image: equal, or equal once a pinned digest is left out of one side?"""
    if not a or not b:
        return False
    if a == b or same_image_name(a, b):
        return True
    bare_a, _, digest_a = a.partition("@")
    bare_b, _, digest_b = b.partition("@")
    if digest_a and digest_b:
        return digest_a == digest_b
    return same_image_name(bare_a, bare_b)


def _snapshot(name: str, image: str, swarm: dict[str, Any]) -> ContainerSnapshot:
    bare, _, digest = image.partition("@")
    repo = bare.rsplit(":", 1)[0] if ":" in bare.rsplit("/", 1)[-1] else bare
    digests = (f"{repo}@{digest}",) if digest else ()
    return ContainerSnapshot(name, bare, image, {SWARM: swarm}, digests)


def snapshot_of_service(attrs: Mapping[str, Any]) -> ContainerSnapshot:
    """The snapshot of a service from its inspect."""
    spec = dict(attrs.get("Spec") or {})
    status = attrs.get("UpdateStatus") or {}
    swarm = {
        "id": attrs.get("ID"),
        "version": (attrs.get("Version") or {}).get("Index"),
        "spec": spec,
        "previous_spec": attrs.get("PreviousSpec"),
        "update_state": status.get("State"),
        "update_message": status.get("Message"),
    }
    return _snapshot(str(spec.get("Name") or attrs.get("ID") or "?"), image_of(spec), swarm)


def swarm_facts(snapshot: ContainerSnapshot | None) -> Mapping[str, Any]:
    """``config["swarm"]`` of a snapshot; empty for a container's."""
    if snapshot is None:
        return {}
    found = snapshot.config.get(SWARM)
    return found if isinstance(found, Mapping) else {}


def previous_of_service(snapshot: ContainerSnapshot) -> ContainerSnapshot | None:
    """The service as its previous spec describes it (Swarm keeps one): what a deploy replaced."""
    facts = swarm_facts(snapshot)
    previous = facts.get("previous_spec")
    if not isinstance(previous, Mapping) or not image_of(previous):
        return None
    swarm = {"id": facts.get("id"), "version": None, "spec": dict(previous), "previous_spec": None}
    return _snapshot(snapshot.name, image_of(previous), swarm)


def rolling_back(snapshot: ContainerSnapshot) -> bool:
    """Is the service's last change a rollback (Swarm's own, or one asked for), not a deploy?"""
    return swarm_facts(snapshot).get("update_state") in ROLLING_BACK


async def capture_service(api: Any, name: str) -> ContainerSnapshot | None:
    """The service ``name`` as it is now; None when there is no such service."""
    try:
        attrs = await asyncio.to_thread(api.inspect_service, name)
    except NotFound:
        return None
    return snapshot_of_service(attrs)
