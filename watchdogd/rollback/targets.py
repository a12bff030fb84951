"""What a service's rollback acts on: one container, or every container of a Compose service.

A :class:`Target` answers which containers are the service's now, what a
failed one is kept as, and whether a kept one must leave the service's
grouping (a Compose project finds its containers by label, so a kept bad
container that still carried them would be started again by the next
``docker compose up``). A Swarm service is the third kind: its tasks are
Swarm's, so its rollback is :mod:`watchdogd.rollback.swarm`'s, not the container step's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from watchdogd.config.models import ServiceConfig

COMPOSE = "com.docker.compose."
PROJECT_LABEL = f"{COMPOSE}project"
SERVICE_LABEL = f"{COMPOSE}service"
ONEOFF_LABEL = f"{COMPOSE}oneoff"
NUMBER_LABEL = f"{COMPOSE}container-number"
KEPT_PREFIX = "org.watchdogd.kept."
"""A kept container's Compose labels move under this prefix: kept for the record, unseen by Compose."""
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def failed_name(name: str, deployment_id: str) -> str:
    """Where a bad container is kept: ``<name>-failed-<deployment>``, a valid container name."""
    return f"{name}-failed-{_NAME_UNSAFE.sub('-', deployment_id)}"


class Target(Protocol):
    """The containers a service's rollback acts on."""

    @property
    def label(self) -> str:
        """How messages name it: ``container api`` or ``compose shop/api``."""
        ...

    @property
    def grouped(self) -> bool:
        """Its containers are found by label: a kept one must leave the group (see :func:`kept_labels`)."""
        ...

    async def names(self, api: Any) -> list[str]:
        """The names of the target's containers now, running or not, kept ones excluded."""
        ...

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Does a Docker event's actor (its name and labels) belong to the target?"""
        ...


@dataclass(frozen=True, slots=True)
class OneContainer:
    name: str
    grouped: bool = False

    @property
    def label(self) -> str:
        return f"container {self.name}"

    async def names(self, api: Any) -> list[str]:
        found = await asyncio.to_thread(api.containers, all=True, filters={"name": f"^/{self.name}$"})
        return [self.name] if found else []

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return attributes.get("name") == self.name


@dataclass(frozen=True, slots=True)
class ComposeService:
    project: str
    service: str
    grouped: bool = True

    @property
    def label(self) -> str:
        return f"compose {self.project}/{self.service}"

    async def names(self, api: Any) -> list[str]:
        filters = {"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={self.service}"]}
        found = await asyncio.to_thread(api.containers, all=True, filters=filters)
        rows = [c for c in found if (c.get("Labels") or {}).get(ONEOFF_LABEL, "False") != "True"]
        rows.sort(key=lambda c: _number((c.get("Labels") or {}).get(NUMBER_LABEL)))
        return [str((c.get("Names") or ["/?"])[0]).lstrip("/") for c in rows]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return (
            attributes.get(PROJECT_LABEL) == self.project
            and attributes.get(SERVICE_LABEL) == self.service
            and attributes.get(ONEOFF_LABEL, "False") != "True"
        )


@dataclass(frozen=True, slots=True)
class SwarmService:
    """A Docker Swarm service: rolled back to its previous spec by Swarm (see :mod:`.swarm`)."""

    name: str
    grouped: bool = False
    event_type: str = "service"
    """Its deploys are Swarm service updates, not container starts."""

    @property
    def label(self) -> str:
        return f"swarm service {self.name}"

    async def names(self, api: Any) -> list[str]:
        """The containers of its tasks on this engine."""
        found = await asyncio.to_thread(
            api.containers, all=True, filters={"label": f"com.docker.swarm.service.name={self.name}"}
        )
        return [str((c.get("Names") or ["/?"])[0]).lstrip("/") for c in found]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return attributes.get("name") == self.name


def _number(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def target_of(config: ServiceConfig) -> OneContainer | ComposeService | SwarmService | None:
    if config.swarm_service is not None:
        return SwarmService(config.swarm_service)
    if config.compose is not None:
        return ComposeService(config.compose.project, config.compose.service)
    if config.container is not None:
        return OneContainer(config.container)
    return None


def kept_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A kept container's labels: Compose's moved under :data:`KEPT_PREFIX`, the others as they are."""
    out: dict[str, str] = {}
    for key, value in (labels or {}).items():
        out[KEPT_PREFIX + key if key.startswith(COMPOSE) else key] = value
    return out


def in_group(labels: Mapping[str, str] | None) -> bool:
    return any(key.startswith(COMPOSE) for key in labels or {})
