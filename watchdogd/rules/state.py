"""A rule's evaluation state: every timer in one immutable value, stored and carried across restarts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from watchdogd.config.types import format_duration as _fd
from watchdogd.errors import RuleError
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.rules.rule import NO_DATA, OK, Rule


class EvalState(NamedTuple):
    """One rule's evaluation state: immutable, every timer in it, storable.

    A tuple rather than a frozen dataclass because a new one is made at every
    evaluation and a tuple is several times cheaper to build.
    """

    state: RuleState
    since: float
    """When ``state`` was entered."""
    reason: str
    """Why the rule is in ``state``, in words."""
    started_at: float
    """When the deploy started: absence and cumulative failures count from here."""
    threshold: float | None
    """The number the condition compares with; None: no baseline to derive it from."""
    baseline: float | None = None
    last_eval: float | None = None
    last_sample: float | None = None
    value: float | None = None
    """The value of the latest evaluation; None when it had no data."""
    active_since: float | None = None
    clearing_since: float | None = None
    missing_since: float | None = None
    failures: int = 0
    """``of N``: the last N outcomes as bits, newest lowest; cumulative: the count."""
    failed_values: tuple[float | None, ...] = ()
    """The values of the latest failing evaluations, at most M: the evidence."""
    last_match: float | None = None
    evidence: tuple[float, ...] = ()
    """A sequential rule's: (dispersion, pre-deploy rate, errors, requests, since) of its
    current stretch of evidence (rules/sequential_rule.py); a latency rule's: its histograms
    before and after the deploy (rules/latency_rule.py); empty for every other rule."""


def start(rule: Rule, started_at: float, baseline: float | None = None) -> EvalState:
    """The state of ``rule`` when a deploy starts at ``started_at``.

    ``baseline`` is the pre-deploy mean (see ``baseline_mean``) for a rule with a
    baseline; without it such a rule stays ``no_data`` and says so.
    """
    if rule.baseline_before is None:
        return EvalState(NO_DATA, started_at, "not evaluated yet", started_at, rule.condition.threshold)
    if baseline is None or not math.isfinite(baseline):
        why = f"no baseline: no data in the {_fd(rule.baseline_before)} before the deploy"
        return EvalState(NO_DATA, started_at, why, started_at, None, None)
    return EvalState(
        NO_DATA, started_at, "not evaluated yet", started_at, baseline_threshold(rule, baseline), baseline
    )


def baseline_mean(samples: Iterable[Sample], deploy_at: float, before: float) -> float | None:
    """Mean of the finite values in ``[deploy_at - before, deploy_at)``; None if there are none."""
    total = 0.0
    count = 0
    low = deploy_at - before
    for sample in samples:
        value = sample.value
        if low <= sample.time < deploy_at and value is not None and math.isfinite(value):
            total += value
            count += 1
    return total / count if count else None


def baseline_threshold(rule: Rule, mean: float) -> float:
    """The baseline widened by the tolerance, in the direction the operator looks; never under ``min``."""
    margin = abs(mean) * rule.baseline_tolerance
    if rule.condition.op in (">", ">="):
        floor = rule.baseline_min
        return mean + margin if floor is None else max(mean + margin, floor)
    return mean - margin


def resume(state: EvalState, now: float) -> EvalState:
    """``state`` as it was last evaluated, carried over to ``now`` across time nobody watched.

    The time between its last evaluation and ``now`` (watchdogd stopped, or
    another replica took over) is a gap, never evidence: every timer is moved
    on by it, so a ``for``, ``keep_firing_for``, ``on_missing.after`` or
    ``absent_for`` needs the rest of its time observed. A stored time ahead of
    ``now`` (a clock that ran ahead) is moved back the same way, so evaluation
    goes on instead of refusing every sample as older than the last.
    """
    last = state.last_eval
    if last is None or last == now:
        return state

    def moved(at: float | None) -> float | None:
        return None if at is None else at + (now - last)

    return state._replace(
        since=min(state.since, now),
        started_at=moved(state.started_at) or state.started_at,
        last_eval=now,
        last_sample=moved(state.last_sample),
        active_since=moved(state.active_since),
        clearing_since=moved(state.clearing_since),
        missing_since=moved(state.missing_since),
        last_match=moved(state.last_match),
    )


def no_counts(
    rule: Rule, state: EvalState, now: float, at: float, why: str | None
) -> tuple[EvalState, tuple[Transition, ...]]:
    """A sequential or latency rule's poll without counts: no evidence either way; ``ok``
    becomes ``no_data`` (ok is a verdict on data), any other state only notes the gap."""
    missing_since = state.missing_since if state.missing_since is not None else now
    kept = state._replace(last_eval=now, last_sample=at, missing_since=missing_since)
    if state.state is not OK:
        return kept, ()
    reason = f"no data ({why})" if why else "no data"
    new = kept._replace(state=NO_DATA, since=now, reason=reason)
    return new, (Transition(rule.name, now, OK, NO_DATA, None, state.threshold, reason, (None,)),)


def dump_state(state: EvalState) -> dict[str, Any]:
    """A JSON-ready form of ``state``, for the store."""
    data = state._asdict()
    data["state"] = state.state.value
    data["failed_values"] = list(state.failed_values)
    data["evidence"] = list(state.evidence)
    return data


_TIMES = ("since", "started_at")


_OPTIONAL_TIMES = (
    "last_eval",
    "last_sample",
    "active_since",
    "clearing_since",
    "missing_since",
    "last_match",
)


_OPTIONAL_NUMBERS = ("threshold", "baseline", "value")


_REQUIRED = ("state", "since", "reason", "started_at", "threshold")


def load_state(data: Mapping[str, Any]) -> EvalState:
    """The state ``dump_state`` gave; RuleError if it is not one.

    Every field is checked here, so that a damaged store fails on loading with
    the field named, not later inside ``evaluate``.
    """
    if not isinstance(data, Mapping):
        raise RuleError(f"not a stored rule state: expected a mapping, got {type(data).__name__}")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise RuleError(f"not a stored rule state: {', '.join(missing)} missing")
    try:
        state = RuleState(data["state"])
    except (TypeError, ValueError):
        raise RuleError(f"not a stored rule state: unknown state {data['state']!r}") from None
    reason = data["reason"]
    if not isinstance(reason, str):
        raise RuleError(f"not a stored rule state: reason is {reason!r}, not a text")
    fields: dict[str, Any] = {"state": state, "reason": reason}
    for name in _TIMES:
        fields[name] = _number(name, data[name], finite=True)
    for name in _OPTIONAL_TIMES + _OPTIONAL_NUMBERS:
        raw = data.get(name)
        fields[name] = None if raw is None else _number(name, raw, finite=name in _OPTIONAL_TIMES)
    failures = data.get("failures", 0)
    if type(failures) is not int or failures < 0:
        raise RuleError(f"not a stored rule state: failures is {failures!r}, not a count")
    fields["failures"] = failures
    failed = data.get("failed_values", ())
    if not isinstance(failed, list | tuple):
        raise RuleError(f"not a stored rule state: failed_values is {failed!r}, not a list")
    fields["failed_values"] = tuple(None if v is None else _number("failed_values", v) for v in failed)
    evidence = data.get("evidence", ())
    if not isinstance(evidence, list | tuple):
        raise RuleError(f"not a stored rule state: evidence is {evidence!r}, not a list")
    fields["evidence"] = tuple(_number("evidence", v, finite=True) for v in evidence)
    return EvalState(**fields)


def _number(name: str, raw: object, finite: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
        raise RuleError(f"not a stored rule state: {name} is {raw!r}, not a number")
    if finite and not math.isfinite(raw):
        raise RuleError(f"not a stored rule state: {name} is {raw!r}, not a time")
    return float(raw)
