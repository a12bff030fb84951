"""The previous image kept on the host while a rollback to it may still be needed.

A deploy leaves the previous image unused (``docker compose build`` even
leaves it untagged), so ``docker image prune`` deletes it, and ``docker image
prune -a`` deletes it even when tagged. What prune never deletes is an image a
container uses: for each deployment with a previous image, watchdogd creates a
*holder*, a container that is never started (no network, restart policy
``no``, a command that does not exist), named
``watchdogd-keep-<service>-<deployment>`` and labelled
``org.watchdogd.keep.{service,deployment,image}``.

A tag was not chosen: removing the last tag of an image a stopped container
uses takes ``--force``, which deletes the image under that container.

Holders are released (removed; the image is left as it is) once the deployment
cannot be rolled back any more: promoted, rolled back, superseded, gone from the
store, or a newer deployment of the service exists. A deployment that is
unverified or whose rollback failed keeps its holder (an operator may still
roll back or retry). ``docker container prune`` or ``docker system prune``
remove holders too; the rollback then pulls the image back by the digest
recorded when it ran (``rollback.container.pull``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable
from typing import Any

import structlog
from docker.errors import APIError, NotFound

from watchdogd.model import ContainerSnapshot, Deployment, DeploymentState

log = structlog.get_logger("watchdogd.rollback.holds")

LABEL = "org.watchdogd.keep"
SERVICE_LABEL = f"{LABEL}.service"
DEPLOYMENT_LABEL = f"{LABEL}.deployment"
IMAGE_LABEL = f"{LABEL}.image"
ENTRYPOINT = "/watchdogd-keeps-this-image"
"""Never run: a holder is created, never started."""
RELEASED = frozenset({DeploymentState.PROMOTED, DeploymentState.ROLLED_BACK, DeploymentState.SUPERSEDED})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def holder_name(service: str, deployment_id: str, index: int = 0) -> str:
    name = f"watchdogd-keep-{_UNSAFE.sub('-', service)}-{_UNSAFE.sub('-', deployment_id)}"
    return f"{name}-{index + 1}" if index else name


def _images(snapshot: ContainerSnapshot) -> list[tuple[str, str]]:
    """(image ID, reference) of each distinct image the snapshot's containers ran."""
    seen: dict[str, str] = {}
    for shot in snapshot.containers:
        if shot.image_id and shot.image_id not in seen:
            seen[shot.image_id] = shot.image
    return list(seen.items())


async def hold(api: Any, service: str, deployment_id: str, previous: ContainerSnapshot | None) -> list[str]:
    """Holders for the images of ``previous``; the names made. An image not on the host is skipped."""
    if previous is None:
        return []
    made: list[str] = []
    for index, (image_id, ref) in enumerate(_images(previous)):
        name = holder_name(service, deployment_id, index)
        body = {
            "Image": image_id,
            "Entrypoint": [ENTRYPOINT],
            "Cmd": [],
            "Labels": {LABEL: "1", SERVICE_LABEL: service, DEPLOYMENT_LABEL: deployment_id, IMAGE_LABEL: ref},
            "NetworkDisabled": True,
            "HostConfig": {"NetworkMode": "none", "RestartPolicy": {"Name": "no"}},
        }
        try:
            await asyncio.to_thread(api.create_container_from_config, body, name)
        except NotFound:
            log.warning("image_not_held", service=service, image=ref, reason="not on this host")
            continue
        except APIError as exc:
            if exc.status_code == 409:  # already held (a restart, a second registration)
                made.append(name)
                continue
            log.warning("image_not_held", service=service, image=ref, reason=str(exc.explanation or exc))
            continue
        made.append(name)
    return made


async def holders(api: Any) -> list[dict[str, Any]]:
    """Every holder on the host: ``Id``, ``Names``, ``Labels`` as ``docker ps -a`` lists them."""
    rows = await asyncio.to_thread(api.containers, all=True, filters={"label": f"{LABEL}=1"})
    return list(rows)


def releasable(deployment: Deployment | None, newer: bool) -> bool:
    """May the holder of ``deployment`` go: nothing can roll it back any more."""
    return deployment is None or deployment.state in RELEASED or newer


async def release(api: Any, rows: Iterable[dict[str, Any]]) -> list[str]:
    """Remove the holders ``rows``; the names removed. Their images stay as they are."""
    gone: list[str] = []
    for row in rows:
        with contextlib.suppress(NotFound):  # removed already: released all the same
            await asyncio.to_thread(api.remove_container, row["Id"], force=True)
        gone.append(str((row.get("Names") or ["/?"])[0]).lstrip("/"))
    return gone
