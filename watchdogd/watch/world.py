"""The config as it runs: every rule compiled, every service's settings resolved.

A reload builds a new ``World`` first (a rule that cannot compile refuses the
reload, the old world keeps running) and only then swaps it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watchdogd.config.checks import poll_intervals
from watchdogd.config.models import Config, RuleConfig, ServiceConfig
from watchdogd.decisions import Policy, policy_for
from watchdogd.errors import Invalid
from watchdogd.rules import Rule, compile_rule, fingerprint
from watchdogd.sources import Measure


@dataclass(frozen=True, slots=True)
class RuleRun:
    """One rule of one service, compiled, with what it asks of its source."""

    service: str
    config: RuleConfig
    rule: Rule
    measure: Measure
    fingerprint: str
    """What the rule means: a stored state is reused only under the same one."""
    service_initial_delay: float = 0.0
    blind_after: float = 300.0
    """How long a rollback rule may have no data before it is notified as blind."""


@dataclass(frozen=True, slots=True)
class World:
    config: Config
    runs: dict[str, tuple[RuleRun, ...]]
    """Each service's rules, in config order."""
    by_source: dict[str, tuple[RuleRun, ...]] = field(default_factory=dict)
    """The rules that read each source, in every service (made once: looked up at every poll)."""

    def __post_init__(self) -> None:
        if not self.by_source:
            readers: dict[str, list[RuleRun]] = {}
            for runs in self.runs.values():
                for run in runs:
                    readers.setdefault(run.config.source, []).append(run)
            self.by_source.update({name: tuple(found) for name, found in readers.items()})

    @classmethod
    def build(cls, config: Config) -> World:
        """RuleError when a rule cannot be evaluated."""

        def window(service: ServiceConfig) -> float:
            return service.window or config.defaults.window

        intervals = poll_intervals(config)
        runs = {
            name: tuple(
                RuleRun(
                    name,
                    rc,
                    compile_rule(rc, interval=intervals[rc.source], window=window(service)),
                    Measure.of(rc),
                    fingerprint(rc),
                    service_initial_delay=service.initial_delay,
                    blind_after=service.blind_after or config.defaults.blind_after,
                )
                for rc in service.rules
            )
            for name, service in config.services.items()
        }
        return cls(config, runs)

    def service(self, name: str) -> ServiceConfig:
        """The service's config; Invalid (422) when the config has no such service."""
        found = self.config.services.get(name)
        if found is None:
            names = ", ".join(self.config.services) or "none"
            raise Invalid(f"no service '{name}' in the config (services: {names})")
        return found

    def policy(self, service: str, sql_policy: str | None = None, backup_id: str | None = None) -> Policy:
        return policy_for(self.config, service, sql_policy, backup_id)

    def min_data(self, service: str) -> float:
        own = self.service(service).min_data
        return own if own is not None else self.config.defaults.min_data

    def on_unverified(self, service: str) -> str:
        return self.service(service).on_unverified or self.config.defaults.on_unverified

    def window(self, service: str) -> float:
        return self.service(service).window or self.config.defaults.window

    def interval(self, service: str) -> float:
        return self.service(service).interval or self.config.defaults.interval

    def reading(self, source: str) -> list[RuleRun]:
        """The rules that read ``source``, in every service."""
        return list(self.by_source.get(source, ()))

    def sources_of(self, service: str) -> set[str]:
        return {run.config.source for run in self.runs.get(service, ())}

    def run(self, service: str, rule: str) -> RuleRun | None:
        return next((r for r in self.runs.get(service, ()) if r.rule.name == rule), None)


class Current:
    """The world in force, called for it by the parts that read the config; a reload swaps it."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __call__(self) -> World:
        return self.world
