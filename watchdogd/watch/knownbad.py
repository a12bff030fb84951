"""Known-bad images: a deploy of an image ID the service was rolled back from recently.

Such a deploy (noticed from Docker events, or registered) is notified
(``known_bad``), its deployment marked (``known_bad`` in its facts), and with
``on_known_bad: rollback`` a rollback is proposed at once with the reason
"image X was rolled back at T". ``known_bad_for`` (default 24h) is how long a
rollback makes an image known bad; the store's deployment history is the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from watchdogd.model import Deployment, DeploymentState


def known_bad(deployment: Deployment, history: Sequence[Deployment], since: float) -> dict[str, Any] | None:
    """The mark of ``deployment`` when its image was rolled back from, for its service, at ``since`` or later.

    ``history`` is the store's deployments, newest first. None when the image is not known bad.
    """
    current = deployment.facts.current
    if current is None:
        return None
    ids = {s.image_id for s in current.containers if s.image_id}
    if not ids:
        return None
    for earlier in history:
        if earlier.id == deployment.id or earlier.service != deployment.service:
            continue
        if earlier.state is not DeploymentState.ROLLED_BACK or earlier.finished_at is None:
            continue
        if earlier.finished_at < since:
            continue
        bad = earlier.facts.current
        if bad is None:
            continue
        hit = next((s for s in bad.containers if s.image_id in ids), None)
        if hit is None:
            continue
        at = datetime.fromtimestamp(earlier.finished_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "image": hit.image,
            "image_id": hit.image_id,
            "rolled_back_at": earlier.finished_at,
            "rolled_back_deployment": earlier.id,
            "reason": f"image {hit.image} ({hit.image_id[:19]}) was rolled back at {at}"
            f" (deployment {earlier.id})",
        }
    return None
