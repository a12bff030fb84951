"""Open deployments in memory: the store's record of each, and each rule's state.

The store is the one source of truth; ``refresh`` reads a service's open
deployment again after anything changed it (here or on another replica).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from watchdogd.errors import RuleError
from watchdogd.model import Deployment, RuleState
from watchdogd.rules import EvalState, load_state, resume
from watchdogd.store import Store
from watchdogd.watch.world import World

log = structlog.get_logger("watchdogd")


@dataclass
class Live:
    deployment: Deployment
    states: dict[str, EvalState] = field(default_factory=dict)
    tallies: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Each rule's evaluations with data, and in all: how much of the window it saw."""
    resumed: set[str] = field(default_factory=set)
    """Rules whose saved state was carried over to the time it was read, not evaluated since."""

    def count(self, rule: str, had_data: bool) -> tuple[int, int]:
        seen, total = self.tallies.get(rule, (0, 0))
        self.tallies[rule] = tally = (seen + had_data, total + 1)
        return tally


@dataclass(frozen=True, slots=True)
class RuleView:
    name: str
    state: RuleState
    value: float | None
    since: float | None
    reason: str


class Watched:
    """Open deployments by service."""

    def __init__(
        self,
        store: Store,
        world: Callable[[], World],
        clock: Callable[[], float],
        on_new: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.world = world
        self.clock = clock
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

    async def refresh(self, service: str, open_ones: list[Deployment] | None = None) -> Live | None:
        """Read the service's open deployment from the store again; its rule states stay in memory.

        ``open_ones``: the service's open deployments, newest first, when the caller has read them.
        """
        if open_ones is None:
            open_ones = await self.store.deployments(open_only=True, service=service)
        if not open_ones:
            self._live.pop(service, None)
            return None
        newest = open_ones[0]
        live = self._live.get(service)
        if live is not None and live.deployment.id == newest.id:
            live.deployment = newest
            return live
        raw = await self.store.rule_states(newest.id)
        tallies = {rule: _tally(saved) for rule, saved in raw.items()}
        states = await self.stored_states(newest, saved=raw)
        live = self._live[service] = Live(newest, states, tallies, resumed=set(states))
        self.on_new(service)
        return live

    def keep_states(self, old: World, new: World) -> None:
        """After a reload: a rule keeps its state only while it means the same (a new description
        or severity keeps it; a new threshold or window starts it again from no_data)."""
        for live in self:
            service = live.deployment.service
            before = {r.rule.name: r.fingerprint for r in old.runs.get(service, ())}
            after = {r.rule.name: r.fingerprint for r in new.runs.get(service, ())}
            for name in list(live.states):
                if before.get(name) != after.get(name):
                    del live.states[name]

    async def refresh_all(self) -> None:
        by_service: dict[str, list[Deployment]] = {}
        for deployment in await self.store.deployments(open_only=True):  # newest first
            by_service.setdefault(deployment.service, []).append(deployment)
        for service in set(by_service) | set(self._live):
            await self.refresh(service, by_service.get(service, []))

    async def reload_states(self) -> None:
        """A follower's view: the states the leader saved."""
        for live in self:
            live.states = await self.stored_states(live.deployment, carry=False)

    async def stored_states(
        self, deployment: Deployment, carry: bool = True, saved: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, EvalState]:
        """The states saved for ``deployment``; with ``carry``, carried over to now to evaluate on.

        A state is reused only for a rule that still means the same (its
        fingerprint); the time since it was last evaluated is a gap, not
        evidence (``watchdogd.rules.resume``). A follower only shows the
        leader's states (``carry=False``): it neither moves nor logs them. ``saved``: the
        stored states when the caller has read them already.
        """
        runs = {r.rule.name: r for r in self.world().runs.get(deployment.service, ())}
        now = self.clock()
        states = {}
        if saved is None:
            saved = await self.store.rule_states(deployment.id)
        for rule, raw in saved.items():
            run = runs.get(rule)
            if run is None:
                continue
            if raw.get("fingerprint") != run.fingerprint:
                if not carry:
                    continue
                log.warning(
                    "rule_state_discarded",
                    deployment=deployment.id,
                    rule=rule,
                    why="the rule changed since its state was saved: it starts again from no_data",
                )
                continue
            try:
                state = load_state(raw)
            except RuleError as exc:
                log.warning("rule_state_unreadable", deployment=deployment.id, rule=rule, error=str(exc))
                continue
            if not carry:
                states[rule] = state
                continue
            if state.last_eval is not None and state.last_eval > now:
                log.warning(
                    "rule_state_ahead_of_clock",
                    deployment=deployment.id,
                    rule=rule,
                    saved_at=_rfc3339(state.last_eval),
                    now=_rfc3339(now),
                    kept="the observed time of its timers; evaluation goes on from now",
                )
            states[rule] = resume(state, now)
        return states

    def rule_views(
        self, deployment: Deployment, world: World, states: dict[str, EvalState] | None = None
    ) -> list[RuleView]:
        """Each rule's state for ``deployment``: the live ones, or ``states`` when given."""
        if states is None:
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

    async def seen(self, deployment: Deployment, world: World) -> Seen:
        """What the rules saw of ``deployment``, live or (closed) as last saved."""
        live = self._live.get(deployment.service)
        if live is not None and live.deployment.id == deployment.id:
            return Seen(self.rule_views(deployment, world), dict(live.tallies))
        raw = await self.store.rule_states(deployment.id)
        states = await self.stored_states(deployment, carry=False, saved=raw)
        tallies = {rule: _tally(saved) for rule, saved in raw.items()}
        return Seen(self.rule_views(deployment, world, states), tallies)

    def blind_rollback_rules(
        self, deployment: Deployment, world: World, seen: Seen | None = None
    ) -> list[str]:
        """The rollback rules that did not verify ``deployment``: no data now, or data for less of
        the window than the service's ``min_data``."""
        if seen is None:
            live = self._live.get(deployment.service)
            tallies = live.tallies if live and live.deployment.id == deployment.id else {}
            seen = Seen(self.rule_views(deployment, world), tallies)
        actions = {r.rule.name: r.rule.action for r in world.runs.get(deployment.service, ())}
        least = world.min_data(deployment.service)
        blind = []
        for view in seen.views:
            if actions.get(view.name) != "rollback":
                continue
            count, total = seen.tallies.get(view.name, (0, 0))
            if view.state is RuleState.NO_DATA or (least > 0 and (not total or count / total < least)):
                blind.append(view.name)
        return blind


@dataclass(frozen=True, slots=True)
class Seen:
    views: list[RuleView]
    tallies: dict[str, tuple[int, int]]

    @property
    def unverified(self) -> list[str]:
        """Every rule with no data (what the promotion's audit lists)."""
        return [v.name for v in self.views if v.state is RuleState.NO_DATA]


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _tally(saved: dict[str, object]) -> tuple[int, int]:
    raw = saved.get("tally")
    if isinstance(raw, list) and len(raw) == 2 and all(type(n) is int and n >= 0 for n in raw):
        return int(raw[0]), int(raw[1])
    return 0, 0
