"""A rule compiled from its config, checked once; and its fingerprint: what it means."""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from watchdogd.config.models import RuleConfig
from watchdogd.config.types import Condition
from watchdogd.errors import RuleError
from watchdogd.model import RuleState
from watchdogd.rules.distribution import Latency
from watchdogd.rules.sequential import Sequential

OK = RuleState.OK
PENDING = RuleState.PENDING
FIRING = RuleState.FIRING
NO_DATA = RuleState.NO_DATA

# Float times are sums and products of decimal seconds since the epoch, where a
# float steps by 2.4e-7 (at 1.8e9): a microsecond of slack keeps two polls 0.3 s
# apart from falling short of 0.6 s by that step, and 0.1 * 7 - 0.1 * 4 of 0.3.
_EPS = 1e-6

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

MissingResult = Literal["hold", "fail", "pass"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule compiled from its config: what the engine needs, checked once.

    ``condition`` is what makes an evaluation fail; for an ``absent_for`` rule
    it is ``>= absent_for`` on the seconds of silence. ``failures`` is M of
    ``failures: {count: M, of: N}`` (0: the rule uses ``for``), ``failures_of``
    is N (0: counted since the deploy started).
    """

    name: str
    source: str
    condition: Condition
    action: Literal["rollback", "notify"] = "notify"
    severity: str = "critical"
    for_: float = 0.0
    immediate: bool = False
    failures: int = 0
    failures_of: int = 0
    clear_condition: Condition | None = None
    keep_firing_for: float = 0.0
    missing_after: float = 0.0
    missing_result: MissingResult = "hold"
    baseline_before: float | None = None
    baseline_tolerance: float = 0.0
    baseline_min: float | None = None
    """An absolute floor: the threshold of a ``>``/``>=`` baseline rule is never below it."""
    absent_for: float | None = None
    over: float | None = None
    sequential: Sequential | None = None
    """A sequential rule's settings: it fires on the evidence of its counts (rules/sequential.py)."""
    latency: Latency | None = None
    """A latency rule's settings: it compares histograms (rules/distribution.py)."""
    _compare: Callable[[float, float], bool] = field(init=False, repr=False, compare=False)
    _clear: Callable[[float, float], bool] | None = field(init=False, repr=False, compare=False)
    _clear_threshold: float = field(init=False, repr=False, compare=False)
    _mask: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise RuleError(f"rule '{self.name}': {problem}")
        clear = self.clear_condition
        object.__setattr__(self, "_compare", _COMPARE[self.condition.op])
        object.__setattr__(self, "_clear", None if clear is None else _COMPARE[clear.op])
        object.__setattr__(self, "_clear_threshold", math.nan if clear is None else clear.threshold)
        object.__setattr__(self, "_mask", (1 << self.failures_of) - 1)

    @property
    def needs_baseline(self) -> bool:
        return self.baseline_before is not None

    @property
    def learns_from(self) -> float:
        """How long before a deploy the rule learns from: what a source must keep."""
        own = self.baseline_before or 0.0
        if self.latency is not None:
            own = max(own, self.latency.history)
        return max(own, self.sequential.history) if self.sequential is not None else own


def _problem(rule: Rule) -> str:
    threshold = rule.condition.threshold
    if rule.baseline_before is None and threshold is None:
        return f"'{rule.condition.op}' needs a number to compare with"
    if threshold is not None and math.isnan(threshold):
        return "a NaN threshold can never be met; write a number"
    clear = rule.clear_condition
    if clear is not None and (clear.threshold is None or math.isnan(clear.threshold)):
        return "a clear condition needs a number to compare with"
    if rule.failures < 0 or rule.failures_of < 0 or (rule.failures_of and rule.failures_of < rule.failures):
        return f"failures: {rule.failures} of {rule.failures_of} cannot happen"
    if rule.failures and (rule.for_ > 0 or rule.immediate):
        return "use for, failures or immediate, not several"
    if min(rule.for_, rule.keep_firing_for, rule.missing_after) < 0:
        return "durations cannot be negative"
    return ""


DEFAULT_INTERVAL = 1.0
"""The poll interval a sequential rule counts its window in when not told (more polls: a safer bound)."""
DEFAULT_WINDOW = 7200.0


def compile_rule(config: RuleConfig, *, interval: float | None = None, window: float | None = None) -> Rule:
    """The engine's form of a rule from the config; RuleError if it cannot be evaluated.

    ``interval`` (its source's poll interval) and ``window`` (its service's watch
    window) size a sequential rule's bound: how many polls the false-rollback
    probability is spread over.
    """
    condition = config.condition
    sequential = None
    if config.sequential is not None:
        sequential = _sequential(config, interval or DEFAULT_INTERVAL, window or DEFAULT_WINDOW)
        condition = Condition(">=", sequential.bound)
    latency = None
    if config.latency is not None:
        spec = config.latency
        latency = Latency(spec.quantile, spec.slower_by, spec.confidence, spec.min_observations, spec.history)
        condition = Condition(">=", 1 + spec.slower_by)
    if config.absent_for is not None:
        condition = Condition(">=", config.absent_for)
    elif condition is None:
        raise RuleError(f"rule '{config.name}': it needs a condition")
    failures = config.failures
    baseline = config.baseline
    return Rule(
        name=config.name,
        source=config.source,
        condition=condition,
        action=config.action,
        severity=config.severity,
        for_=config.for_,
        immediate=config.immediate,
        failures=failures.count if failures else 0,
        failures_of=(failures.of or 0) if failures else 0,
        clear_condition=config.clear_condition,
        keep_firing_for=config.keep_firing_for,
        missing_after=config.on_missing.after,
        missing_result=config.on_missing.result,
        baseline_before=baseline.before if baseline else None,
        baseline_tolerance=baseline.tolerance if baseline else 0.0,
        baseline_min=baseline.min if baseline else None,
        absent_for=config.absent_for,
        over=config.over,
        sequential=sequential,
        latency=latency,
    )


def _sequential(config: RuleConfig, interval: float, window: float) -> Sequential:
    spec = config.sequential
    if spec is None:
        raise RuleError(f"rule '{config.name}': not a sequential rule")
    span = spec.window or window
    return Sequential(
        bad=spec.bad,
        healthy=spec.healthy,
        history=spec.history,
        dispersion=spec.dispersion,
        false_rollback=spec.false_rollback,
        evaluations=max(1, math.ceil(span / interval - 1e-9)),
        min_requests=spec.min_requests,
    )


_MEANING_FREE = frozenset({"name", "description", "severity", "action"})


def fingerprint(config: RuleConfig) -> str:
    """What a rule means, as a short digest: a stored state is reused only under the same one.

    Its source, signal (a sequential rule's counters, rates, history and
    false-rollback probability included; a latency rule's histogram, quantile,
    slower_by, confidence, min_observations and history), condition, timers, failures, baseline
    and missing-data policy count; its name, description, severity and action do not.
    """
    meaning = config.model_dump(mode="json", by_alias=True, exclude=set(_MEANING_FREE))
    baseline = meaning.get("baseline")
    if isinstance(baseline, dict) and baseline.get("min") is None:
        # a rule written before floors existed keeps its fingerprint, and its stored state
        baseline.pop("min", None)
    if meaning.get("sequential") is None:
        meaning.pop("sequential", None)  # likewise for every rule written before sequential ones
    if meaning.get("latency") is None:
        meaning.pop("latency", None)  # and before latency ones
    text = json.dumps(meaning, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
