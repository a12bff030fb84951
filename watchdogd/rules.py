"""The rule engine: from samples over time to ok, pending, firing or no data.

Pure: ``evaluate(rule, state, sample, now)`` is given the time and the sample
and returns the next state and the transitions; it reads no clock and does no
I/O, so tests step time by hand. The state is an immutable value holding every
timer, so it can be stored and restored after a restart.

The timers, and why each exists:

- ``active_since``: start of the current unbroken run of true evaluations;
  ``for: D`` fires once ``now - active_since >= D`` (Prometheus' ``ActiveAt``).
- ``clearing_since``: first evaluation at which a firing rule had cleared;
  ``keep_firing_for`` keeps it firing until this is old enough, so a flapping
  value does not fire, clear and fire again.
- ``missing_since``: first evaluation of the current gap in the data;
  ``on_missing.after`` is measured from it.
- ``last_match``: last time a log pattern matched, for ``absent_for`` rules.

See docs/rules.md for every semantic with a timeline.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from watchdogd.config.models import RuleConfig
from watchdogd.config.types import Condition
from watchdogd.config.types import format_duration as _fd
from watchdogd.errors import RuleError
from watchdogd.model import RuleState, Sample, Transition

OK = RuleState.OK
PENDING = RuleState.PENDING
FIRING = RuleState.FIRING
NO_DATA = RuleState.NO_DATA

# Float times are sums and products of decimal seconds; a nanosecond of slack
# keeps 0.1 * 7 - 0.1 * 4 from falling short of 0.3.
_EPS = 1e-9

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
    absent_for: float | None = None
    over: float | None = None
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


def compile_rule(config: RuleConfig) -> Rule:
    """The engine's form of a rule from the config; RuleError if it cannot be evaluated."""
    condition = config.condition
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
        absent_for=config.absent_for,
        over=config.over,
    )


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
    """The baseline widened by the tolerance, in the direction the operator looks."""
    margin = abs(mean) * rule.baseline_tolerance
    return mean + margin if rule.condition.op in (">", ">=") else mean - margin


def evaluate(
    rule: Rule, state: EvalState, sample: Sample, now: float
) -> tuple[EvalState, tuple[Transition, ...]]:
    """Evaluate ``rule`` on ``sample`` at ``now``: the next state and its transitions.

    ``now`` drives every timer; the sample must not be newer than ``now`` nor
    older than the previous one. Evaluating again at the same ``now`` changes
    nothing. Raises RuleError when time goes backwards.
    """
    last = state.last_eval
    if last is not None and now <= last:
        if now == last:
            return state, ()
        raise RuleError(
            f"rule '{rule.name}': evaluated at {now:g}, before its previous evaluation at {last:g}"
        )
    at = sample.time
    if at > now:
        raise RuleError(f"rule '{rule.name}': sample at {at:g} is newer than the evaluation time {now:g}")
    if state.last_sample is not None and at < state.last_sample:
        raise RuleError(
            f"rule '{rule.name}': sample at {at:g} is older than the previous one at {state.last_sample:g}"
        )
    value = sample.value
    why_missing = sample.reason
    if value is not None and value != value:
        value = None
        why_missing = "the value is NaN"
    last_match = state.last_match
    if rule.absent_for is not None and value is not None:
        if value > 0:
            last_match = at
        value = now - (state.started_at if last_match is None else last_match)
    missing_since: float | None = None
    if state.threshold is None:
        # a baseline rule without a baseline has nothing to compare with: no verdict,
        # whatever on_missing says (a missing sample must not fire it)
        return _no_baseline(state, now, at, value, last_match)
    if value is None:
        missing_since = state.missing_since if state.missing_since is not None else now
        result = rule.missing_result
        if result == "hold" or now - missing_since < rule.missing_after - _EPS:
            return _hold(rule, state, now, at, missing_since, last_match, why_missing)
        hit = result == "fail"
    else:
        hit = rule._compare(value, state.threshold)
    if rule.failures:
        return _count(rule, state, now, at, value, hit, missing_since, last_match, why_missing)
    return _run(rule, state, now, at, value, hit, missing_since, last_match, why_missing)


def condition_now(rule: Rule, state: EvalState) -> bool | None:
    """Whether the rule's condition holds on its latest value; None when there is nothing to judge by.

    What a verify step asks after a rollback: not whether the rule still fires
    (cumulative ``failures`` and ``keep_firing_for`` keep it firing by design)
    but whether what made it fire is still true.
    """
    if state.value is None or state.threshold is None:
        return None
    return rule._compare(state.value, state.threshold)


def _no_baseline(
    state: EvalState, now: float, at: float, value: float | None, last_match: float | None
) -> tuple[EvalState, tuple[Transition, ...]]:
    """No baseline to compare with: the rule stays ``no_data`` and keeps saying why."""
    return state._replace(last_eval=now, last_sample=at, value=value, last_match=last_match), ()


def _hold(
    rule: Rule,
    state: EvalState,
    now: float,
    at: float,
    missing_since: float,
    last_match: float | None,
    why_missing: str | None,
) -> tuple[EvalState, tuple[Transition, ...]]:
    """Missing data that decides nothing: pending and firing hold, ok becomes no_data at once.

    ``on_missing.after`` says when ``result`` starts to apply, not how long a
    rule without data may still say ``ok``: ok is a verdict on data.
    """
    current = state.state
    if current is OK:
        reason = _missing_reason(rule, why_missing, missing_since, now)
        new = state._replace(
            state=NO_DATA,
            since=now,
            reason=reason,
            last_eval=now,
            last_sample=at,
            value=None,
            missing_since=missing_since,
            last_match=last_match,
        )
        return new, (Transition(rule.name, now, OK, NO_DATA, None, state.threshold, reason, (None,)),)
    # a rule that has no verdict keeps saying why, with the latest reason
    reason = state.reason
    if current is NO_DATA and state.threshold is not None:
        reason = _missing_reason(rule, why_missing, missing_since, now)
    return EvalState(
        current,
        state.since,
        reason,
        state.started_at,
        state.threshold,
        state.baseline,
        now,
        at,
        None,
        state.active_since,
        state.clearing_since,
        missing_since,
        state.failures,
        state.failed_values,
        last_match,
    ), ()


def _run(
    rule: Rule,
    state: EvalState,
    now: float,
    at: float,
    value: float | None,
    hit: bool,
    missing_since: float | None,
    last_match: float | None,
    why_missing: str | None,
) -> tuple[EvalState, tuple[Transition, ...]]:
    """``for: D`` (and ``immediate``): true at every evaluation for D."""
    current = state.state
    clearing_since = None
    if hit:
        active = state.active_since if state.active_since is not None else now
        if (
            value is not None
            and state.missing_since is not None
            and state.active_since is not None
            and current is PENDING
        ):
            # Time without data is not evidence: a gap pauses the for timer instead of
            # counting toward it, so two breaching samples around an outage never fire.
            active = min(now, active + (now - state.missing_since))
        new = FIRING if current is FIRING or now - active >= rule.for_ - _EPS else PENDING
    else:
        active = None
        if current is FIRING:
            new, clearing_since = _clearing(rule, state, now, value)
        else:
            new = OK if value is not None else NO_DATA
    if new is current:
        return EvalState(
            current,
            state.since,
            state.reason,
            state.started_at,
            state.threshold,
            state.baseline,
            now,
            at,
            value,
            active,
            clearing_since,
            missing_since,
            0,
            (),
            last_match,
        ), ()
    values = (value,)
    reason = _explain(rule, state, new, now, value, active, missing_since, why_missing, values, 0, last_match)
    return EvalState(
        new,
        now,
        reason,
        state.started_at,
        state.threshold,
        state.baseline,
        now,
        at,
        value,
        active,
        clearing_since,
        missing_since,
        0,
        (),
        last_match,
    ), (_transition(rule, state, new, now, value, reason, values),)


def _count(
    rule: Rule,
    state: EvalState,
    now: float,
    at: float,
    value: float | None,
    hit: bool,
    missing_since: float | None,
    last_match: float | None,
    why_missing: str | None,
) -> tuple[EvalState, tuple[Transition, ...]]:
    """``failures: {count: M, of: N}``, or ``{count: M}`` since the deploy started."""
    current = state.state
    if rule.failures_of:
        bits = ((state.failures << 1) | hit) & rule._mask
        count = bits.bit_count()
    else:
        bits = count = state.failures + hit
    failed = state.failed_values
    if hit:
        failed = (*failed[1 - rule.failures :], value) if rule.failures > 1 else (value,)
    clearing_since = None
    if count >= rule.failures or (current is FIRING and hit):
        new = FIRING
    elif current is FIRING:
        new, clearing_since = _clearing(rule, state, now, value)
        if new is not FIRING and count:
            # Failures still in the last N: back to counting them, not to ok; else the
            # next passing evaluation would turn ok into pending.
            new = PENDING
    elif count:
        new = PENDING
    else:
        new = OK if value is not None else NO_DATA
    if new is current:
        return EvalState(
            current,
            state.since,
            state.reason,
            state.started_at,
            state.threshold,
            state.baseline,
            now,
            at,
            value,
            None,
            clearing_since,
            missing_since,
            bits,
            failed,
            last_match,
        ), ()
    counted = new is FIRING or new is PENDING
    values: tuple[float | None, ...] = failed[-count:] if counted and count else (value,)
    reason = _explain(
        rule, state, new, now, value, None, missing_since, why_missing, values, count, last_match
    )
    return EvalState(
        new,
        now,
        reason,
        state.started_at,
        state.threshold,
        state.baseline,
        now,
        at,
        value,
        None,
        clearing_since,
        missing_since,
        bits,
        failed,
        last_match,
    ), (_transition(rule, state, new, now, value, reason, values),)


def _clearing(
    rule: Rule, state: EvalState, now: float, value: float | None
) -> tuple[RuleState, float | None]:
    """A firing rule whose condition no longer holds: does it clear, and since when?"""
    clear = rule._clear
    if clear is not None and value is not None and not clear(value, rule._clear_threshold):
        return FIRING, None
    since = state.clearing_since if state.clearing_since is not None else now
    if now - since >= rule.keep_firing_for - _EPS:
        return (OK if value is not None else NO_DATA), None
    return FIRING, since


def _transition(
    rule: Rule,
    state: EvalState,
    new: RuleState,
    now: float,
    value: float | None,
    reason: str,
    values: tuple[float | None, ...],
) -> Transition:
    threshold = state.threshold
    clear = rule.clear_condition
    if state.state is FIRING and new is not FIRING and clear is not None and value is not None:
        threshold = clear.threshold
    return Transition(rule.name, now, state.state, new, value, threshold, reason, values)


def _explain(
    rule: Rule,
    state: EvalState,
    new: RuleState,
    now: float,
    value: float | None,
    active: float | None,
    missing_since: float | None,
    why_missing: str | None,
    values: tuple[float | None, ...],
    count: int,
    last_match: float | None,
) -> str:
    """Why ``rule`` goes from its state to ``new``, in one line."""
    what = _verdict(rule, state, value, missing_since, why_missing, now, last_match)
    if new is FIRING:
        if rule.failures:
            return f"{what}; {_failures_text(rule, count, values)}"
        if rule.immediate:
            return f"{what} (immediate: one hit is enough)"
        if rule.for_ > 0 and active is not None:
            return f"{what}, true at every evaluation for {_fd(now - active)} (for: {_fd(rule.for_)})"
        return what
    if new is PENDING:
        if rule.failures:
            return f"{what}; {_failures_text(rule, count, values)}, fires at {rule.failures}"
        return f"{what}; fires if it stays true for {_fd(rule.for_)}"
    if state.state is FIRING:
        if rule.keep_firing_for > 0:
            what += f"; kept firing for {_fd(rule.keep_firing_for)} after it cleared"
        if rule.clear_condition is not None and value is not None:
            return f"{what}; clear condition {rule.clear_condition} met"
        return what
    return what


def _verdict(
    rule: Rule,
    state: EvalState,
    value: float | None,
    missing_since: float | None,
    why_missing: str | None,
    now: float,
    last_match: float | None,
) -> str:
    threshold = state.threshold
    if value is None or threshold is None:
        return _missing_reason(rule, why_missing, missing_since, now)
    if rule.absent_for is not None:
        if rule._compare(value, threshold):
            since = "the deploy started" if last_match is None else "the last match"
            return f"no line matched in the {_fd(value)} since {since} (absent_for: {_fd(rule.absent_for)})"
        return "a line matched" if last_match is not None and last_match >= now - value else "silent"
    op = rule.condition.op
    holds = rule._compare(value, threshold)
    shown_op = op if holds else _NEGATED[op]
    text = f"{value:g} {shown_op} {threshold:g}"
    if state.baseline is not None:
        text += f" (baseline {state.baseline:g} {_tolerance(rule)})"
    return text


def _tolerance(rule: Rule) -> str:
    sign = "+" if rule.condition.op in (">", ">=") else "-"
    return f"{sign}{rule.baseline_tolerance * 100:g}%"


def _missing_reason(rule: Rule, why: str | None, missing_since: float | None, now: float) -> str:
    text = f"no data ({why})" if why else "no data"
    gone = 0.0 if missing_since is None else now - missing_since
    if gone > 0:
        text += f" for {_fd(gone)}"
    result = rule.missing_result
    if result == "fail" and gone >= rule.missing_after - _EPS:
        text += f"; counts as failing (on_missing: fail after {_fd(rule.missing_after)})"
    elif result == "pass" and gone >= rule.missing_after - _EPS:
        text += f"; counts as passing (on_missing: pass after {_fd(rule.missing_after)})"
    return text


def _failures_text(rule: Rule, count: int, values: tuple[float | None, ...]) -> str:
    shown = ", ".join("no data" if v is None else f"{v:g}" for v in values)
    if rule.failures_of:
        return f"{count} of the last {rule.failures_of} evaluations failed ({shown})"
    return f"{count} failed evaluations since the deploy started ({shown})"


_NEGATED = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}


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


_MEANING_FREE = frozenset({"name", "description", "severity", "action"})
"""Rule fields whose change does not change what its stored state means."""


def fingerprint(config: RuleConfig) -> str:
    """What a rule means, as a short digest: a stored state is reused only under the same one.

    Its source, signal, condition, timers, failures, baseline and missing-data
    policy count; its name, description, severity and action do not.
    """
    meaning = config.model_dump(mode="json", by_alias=True, exclude=set(_MEANING_FREE))
    text = json.dumps(meaning, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_state(state: EvalState) -> dict[str, Any]:
    """A JSON-ready form of ``state``, for the store."""
    data = state._asdict()
    data["state"] = state.state.value
    data["failed_values"] = list(state.failed_values)
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
    return EvalState(**fields)


def _number(name: str, raw: object, finite: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
        raise RuleError(f"not a stored rule state: {name} is {raw!r}, not a number")
    if finite and not math.isfinite(raw):
        raise RuleError(f"not a stored rule state: {name} is {raw!r}, not a time")
    return float(raw)
