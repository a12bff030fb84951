"""Which image recreates the containers: the previous one, local by its tag or its ID, else pulled.

A pull happens only with ``pull: true`` and only from a repository the service's
``images`` names; otherwise the step is refused before it stops anything.
"""

from __future__ import annotations

import asyncio
from typing import Any

from docker.errors import APIError, ImageNotFound

from watchdogd.config.models import ContainerStepConfig
from watchdogd.imageref import allowed
from watchdogd.rollback.containerrun import Refused, Run


async def ensure_image(api: Any, run: Run, settings: ContainerStepConfig) -> None:
    """Settle which reference creates the container; refuse when the previous image is gone.

    An image that ran is started by its ID when its name now names other bytes
    (the tag moved). A pull happens only with ``pull: true`` and only from a
    repository the service's ``images`` names: a recorded image by one of its
    digests (the same bytes) or its name, then checked against its ID.
    """
    found = await image_id(api, run.ref)
    if run.image_id and found != run.image_id:
        # The tag may have moved (``app:latest`` now names the new image): use the id itself.
        if await image_id(api, run.image_id) == run.image_id:
            run.ref = run.image_id
            return
        where = f"tag {run.ref} now names {found[:19]}" if found else f"{run.ref} is not local"
        gone = f"previous image {run.image_id[:19]} not available ({where})"
        if not settings.pull:
            raise Refused(f"{gone}: nothing touched")
        source = pullable(run, (*run.digests, run.ref))
        await pull(api, run, source)
        if await image_id(api, run.image_id) != run.image_id:
            raise Refused(f"{gone}; {source} pulled is not {run.image_id[:19]}: nothing touched")
        if source != run.ref:  # pulled by digest: the ID names those bytes, the tag may not
            run.ref = run.image_id
    elif not run.image_id and found is None:
        if settings.pull:
            await pull(api, run, pullable(run, (run.ref,)))
            if await image_id(api, run.ref) is not None:
                return
        raise Refused(f"previous image {run.ref} not available: nothing touched")


def pullable(run: Run, refs: tuple[str, ...]) -> str:
    """The first of ``refs`` the allow-list lets watchdogd pull; refuse when none is."""
    for ref in refs:
        if allowed(ref, run.images) is not None:
            return ref
    raise Refused(
        f"previous image {run.ref} is not local and its repository is not in the service's images: "
        "not pulled from a registry the config does not name; nothing touched"
    )


async def pull(api: Any, run: Run, ref: str) -> None:
    """Pull ``ref``, noted in the run's actions; refuse when the registry says no."""
    try:
        await asyncio.to_thread(api.pull, ref)
    except APIError as exc:
        raise Refused(f"pulling previous image {ref} failed: {exc.explanation or exc}") from exc
    run.actions.append(f"pulled {ref}")


async def image_id(api: Any, ref: str) -> str | None:
    """The ID of the local image ``ref`` names; None when there is none."""
    try:
        attrs = await asyncio.to_thread(api.inspect_image, ref)
    except ImageNotFound:
        return None
    return str(attrs["Id"])
