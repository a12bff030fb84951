"""A latency rule's life: the pre-deploy histogram at the deploy, then the post-deploy one grown per poll.

The statistics are in watchdogd/rules/distribution.py. The state a latency
rule keeps in its :class:`EvalState`:

- ``baseline``: the pre-deploy quantile (None: no histogram before the deploy);
- ``threshold``: ``1 + slower_by``, what the ratio of the quantiles is compared with;
- ``value``: the post-deploy quantile over the pre-deploy one at the latest poll;
- ``evidence``: the pre-deploy histogram, then the post-deploy one (each as its
  number of finite bounds, the bounds, the counts per bucket), then the number of
  looks taken.

States: ``no_data`` with the reason until ``min_observations`` requests are
counted after the deploy (for good when the history has too few); at each look
(``min_observations`` requests, then twice, four times as many ...) ``firing``
when the quantile is ``slower_by`` above the one before with the look's
confidence, ``pending`` when the point estimates alone say so, ``ok``
otherwise; between looks the state holds. A poll without counts is no
evidence either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from watchdogd.config.types import format_duration as _fd
from watchdogd.errors import RuleError
from watchdogd.model import Sample, Transition
from watchdogd.rules.distribution import Histogram, add, judge, quantile, total
from watchdogd.rules.rule import FIRING, NO_DATA, OK, PENDING, Rule
from watchdogd.rules.state import EvalState, no_counts


def start_latency(rule: Rule, started_at: float, history: Iterable[Sample]) -> EvalState:
    """The state when a deploy starts at ``started_at``, with the histogram of the samples before it."""
    spec = rule.latency
    if spec is None:
        raise RuleError(f"rule '{rule.name}': not a latency rule")
    low = started_at - spec.history
    before: Histogram | None = None
    for sample in history:
        if sample.buckets is not None and low <= sample.time < started_at:
            before = add(before, sample.buckets)
    bound = rule.condition.threshold
    span = _fd(spec.history)
    if before is None:
        why = f"no pre-deploy histogram: no bucket counts in the {span} before the deploy"
        return EvalState(NO_DATA, started_at, why, started_at, bound, None)
    counted = total(before)
    if counted < spec.min_observations:
        why = (
            f"too little history: {counted:,.0f} requests in the {span} before the deploy,"
            f" {spec.min_observations} are needed (min_observations)"
        )
        return EvalState(NO_DATA, started_at, why, started_at, bound, None)
    reference = quantile(before, spec.quantile)
    return EvalState(
        NO_DATA,
        started_at,
        f"not evaluated yet; {counted:,.0f} requests in the {span} before the deploy",
        started_at,
        bound,
        reference if math.isfinite(reference) else before[0][-1],
        evidence=(*_flat(before), -1.0, 0.0),
    )


def evaluate_latency(
    rule: Rule, state: EvalState, sample: Sample, now: float
) -> tuple[EvalState, tuple[Transition, ...]]:
    """One poll's bucket counts added: the next state and its transitions (see ``evaluate``)."""
    spec = rule.latency
    if spec is None:
        raise RuleError(f"rule '{rule.name}': not a latency rule")
    at = sample.time
    parsed = _parse(state.evidence)
    if parsed is None or state.baseline is None:
        return state._replace(last_eval=now, last_sample=at), ()
    before, after, looks = parsed
    if sample.buckets is None:
        if sample.reason == "no traffic":
            return state._replace(last_eval=now, last_sample=at), ()
        return no_counts(rule, state, now, at, sample.reason)
    after = sample.buckets if after is None else add(after, sample.buckets)
    counted = total(after)
    evidence = (*_flat(before), *_flat(after), float(looks))
    current = state.state
    point = quantile(after, spec.quantile)
    value = point / state.baseline if state.baseline > 0 and math.isfinite(point) else None
    kept = state._replace(last_eval=now, last_sample=at, value=value, evidence=evidence, missing_since=None)
    due = spec.min_observations * 2**looks
    if counted < due:
        if current is NO_DATA and looks == 0:
            reason = f"{counted:,.0f} of the {spec.min_observations} requests after the deploy it judges on"
            return kept._replace(reason=reason), ()
        return kept, ()
    verdict = judge(spec, before, after, looks)
    kept = kept._replace(evidence=(*_flat(before), *_flat(after), float(looks + 1)))
    new = FIRING if verdict.fires else PENDING if verdict.slower else OK
    reason = verdict.text
    if new is current:
        return kept._replace(reason=reason), ()
    moved = kept._replace(state=new, since=now, reason=reason)
    threshold = state.threshold
    return moved, (Transition(rule.name, now, current, new, value, threshold, reason, (value,)),)


def _flat(h: Histogram) -> tuple[float, ...]:
    return (float(len(h[0])), *h[0], *h[1])


def _parse(evidence: tuple[float, ...]) -> tuple[Histogram, Histogram | None, int] | None:
    """(before, after or None before the first counts, looks taken) from ``evidence``."""
    try:
        before, rest = _take(evidence)
        if rest[0] == -1.0 and len(rest) == 2:  # no post-deploy histogram yet
            return before, None, int(rest[1])
        after, rest = _take(rest)
        return before, after, int(rest[0])
    except (IndexError, ValueError):
        return None


def _take(values: tuple[float, ...]) -> tuple[Histogram, tuple[float, ...]]:
    count = int(values[0])
    if count < 0 or len(values) < 2 + 2 * count + 1:
        raise ValueError("short")
    bounds = tuple(values[1 : 1 + count])
    counts = tuple(values[1 + count : 2 + 2 * count])
    return (bounds, counts), values[2 + 2 * count :]
