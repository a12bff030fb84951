"""One run of the container step: its facts, its containers and what it did, in order.

Settled from the rollback target before Docker is asked anything (:func:`prepare`);
no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from watchdogd.imageref import allowed
from watchdogd.rollback.base import ContainerSnapshot, RollbackTarget, StepResult
from watchdogd.rollback.targets import (
    ComposeService,
    OneContainer,
    SwarmService,
    failed_name,
    target_of,
)


@dataclass
class Run:
    """One run's facts and what it did, in order."""

    units: list[Unit]
    target: OneContainer | ComposeService
    ref: str
    image_id: str
    images: tuple[str, ...] = ()
    """The service's allow-list: what may be started by name alone, and pulled."""
    digests: tuple[str, ...] = ()
    deployment_id: str = ""
    actions: list[str] = field(default_factory=list)
    extras: list[Unit] = field(default_factory=list)
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


class Refused(Exception):
    """A reason to stop before touching anything (or anything more)."""


@dataclass
class Unit:
    """One container of the target: its name, where the bad one is kept, what recreates it."""

    name: str
    failed: str
    config: dict[str, Any]
    config_from: str
    live: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    """The bad container's restart policy, given back if it is put back."""


def prepare(target: RollbackTarget) -> Run | StepResult:
    """The run's facts, or the result when there is nothing to do or nothing to go on."""
    previous, current = target.previous, target.current
    if previous is None:
        return StepResult("failed", "no snapshot of the previous container: the previous image is unknown")
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
    units: list[Unit] = []
    if isinstance(where, ComposeService):
        pairs = [(s.name, s) for s in previous.containers if s.config]
        if not pairs and current is not None:
            pairs = [(s.name, s) for s in current.containers if s.config]
            source = "current"
        else:
            source = "previous"
        if not pairs:
            return StepResult("failed", "no configuration captured for the previous or the current replicas")
        units = [Unit(n, failed_name(n, target.deployment_id), s.config, source) for n, s in pairs]
    else:
        name = target.config.container or (current.name if current else previous.name)
        if previous.config:
            config, source = previous.config, "previous"
        elif current is not None and current.config:
            config, source = current.config, "current"
        else:
            return StepResult("failed", "no configuration captured for the previous or the current container")
        units = [Unit(name, failed_name(name, target.deployment_id), config, source)]
    return Run(
        units,
        where or OneContainer(units[0].name),
        previous.image,
        previous.image_id,
        target.config.images,
        previous.digests,
        deployment_id=target.deployment_id,
        current=current.containers if current is not None else (),
    )


def is_previous(attrs: Mapping[str, Any], run: Run) -> bool:
    """Whether the container ``attrs`` describes runs the previous image (by ID when it is known)."""
    if run.image_id:
        return bool(attrs.get("Image") == run.image_id)
    return bool((attrs.get("Config") or {}).get("Image") == run.ref)


def policy_of(unit: Unit, run: Run) -> dict[str, Any] | None:
    """The restart policy a bad container was deployed with (from its snapshot), to give it back."""
    for snap in run.current:
        if snap.name == unit.name:
            policy = (snap.config.get("HostConfig") or {}).get("RestartPolicy")
            return dict(policy) if isinstance(policy, dict) else None
    return None
