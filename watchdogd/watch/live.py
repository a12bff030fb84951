"""Open deployments in memory: the store's record of each, and each rule's state.

The store is the one source of truth; ``refresh`` reads a service's open
deployment again after anything changed it (here or on another replica).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from watchdogd.errors import RuleError
from watchdogd.model import Deployment, RuleState
from watchdogd.rules import EvalState, load_state
from watchdogd.store import Store
from watchdogd.watch.world import World

log = structlog.get_logger("watchdogd")


@dataclass
class Live:
    deployment: Deployment
    states: dict[str, EvalState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleView:
    name: str
    state: RuleState
    value: float | None
    since: float | None
    reason: str


class Watched:
    """Open deployments by service."""

    def __init__(self, store: Store, on_new: Callable[[str], None] = lambda _: None) -> None:
        self.store = store
        self.on_new = on_new
        """Called with the service when a deployment starts being watched (exec sources arm here)."""
        self._live: dict[str, Live] = {}

    def get(self, service: str) -> Live | None:
        return self._live.get(service)

    def __iter__(self) -> Iterator[Live]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    def services(self) -> set[str]:
        return set(self._live)

    def clear(self) -> None:
        self._live.clear()

    def drop(self, service: str) -> None:
        self._live.pop(service, None)

    async def refresh(self, service: str) -> Live | None:
        """Read the service's open deployment from the store again; its rule states stay in memory."""
        open_ones = [d for d in await self.store.deployments(open_only=True) if d.service == service]
        if not open_ones:
            self._live.pop(service, None)
            return None
        newest = open_ones[0]
        live = self._live.get(service)
        if live is not None and live.deployment.id == newest.id:
            live.deployment = newest
            return live
        live = self._live[service] = Live(newest, await self.stored_states(newest.id))
        self.on_new(service)
        return live

    def keep_states(self, old: World, new: World) -> None:
        """After a reload: a rule keeps its state only while its config is the same."""
        for live in self:
            service = live.deployment.service
            before = {r.rule.name: r.config for r in old.runs.get(service, ())}
            after = {r.rule.name: r.config for r in new.runs.get(service, ())}
            for name in list(live.states):
                if before.get(name) != after.get(name):
                    del live.states[name]

    async def refresh_all(self) -> None:
        services = {d.service for d in await self.store.deployments(open_only=True)}
        for service in services | set(self._live):
            await self.refresh(service)

    async def reload_states(self) -> None:
        """A follower's view: the states the leader saved."""
        for live in self:
            live.states = await self.stored_states(live.deployment.id)

    async def stored_states(self, deployment_id: str) -> dict[str, EvalState]:
        states = {}
        for rule, raw in (await self.store.rule_states(deployment_id)).items():
            try:
                states[rule] = load_state(raw)
            except RuleError as exc:
                log.warning("rule_state_unreadable", deployment=deployment_id, rule=rule, error=str(exc))
        return states

    def rule_views(self, deployment: Deployment, world: World) -> list[RuleView]:
        live = self._live.get(deployment.service)
        states = live.states if live and live.deployment.id == deployment.id else {}
        out = []
        for run in world.runs.get(deployment.service, ()):
            state = states.get(run.rule.name)
            if state is None:
                out.append(RuleView(run.rule.name, RuleState.NO_DATA, None, None, "not evaluated yet"))
            else:
                out.append(RuleView(run.rule.name, state.state, state.value, state.since, state.reason))
        return out

    def blind_rollback_rules(self, deployment: Deployment, world: World) -> list[str]:
        """The rollback rules with no data for ``deployment``: they verified nothing."""
        actions = {r.rule.name: r.rule.action for r in world.runs.get(deployment.service, ())}
        return [
            v.name
            for v in self.rule_views(deployment, world)
            if v.state is RuleState.NO_DATA and actions.get(v.name) == "rollback"
        ]

    def unverified(self, deployment: Deployment, world: World) -> list[str]:
        """Every rule with no data (what the promotion's audit lists)."""
        return [v.name for v in self.rule_views(deployment, world) if v.state is RuleState.NO_DATA]
