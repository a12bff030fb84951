"""A sequential rule's life: learned at the deploy, then one CUSUM step per poll. Reads no clock.

The state a sequential rule keeps in its :class:`EvalState`:

- ``threshold``: the bound ``h`` the evidence must reach (natural log);
- ``baseline``: the healthy rate tested against (None: it could not be learned);
- ``value``: the evidence ``S`` after the latest poll, the largest of the CUSUMs;
- ``evidence``: (dispersion, pre-deploy rate), then for each bad rate weighed
  (``Sequential.alternatives``) its CUSUM and the errors, requests and start of
  the stretch of polls it rests on, so that a proposal says "23 errors in 104
  requests since 12:00:03".

States: ``no_data`` until the first counts after the deploy (or for good,
with the reason, when the history could not say what healthy is); ``ok``
while ``S`` is under half the bound; ``pending`` from half the bound;
``firing`` from the bound, with at least ``min_requests`` in the stretch.
A firing rule clears when ``S`` falls back to 0: the rate went back to
healthy for long enough to outweigh the bad stretch (``S`` is capped at twice
the bound so that this takes seconds, not as long as the bad version ran).
A poll without counts is no evidence either way: the state holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from watchdogd.config.types import format_duration as _fd
from watchdogd.errors import RuleError
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.rules.rule import FIRING, NO_DATA, OK, PENDING, Rule
from watchdogd.rules.sequential import CAP, Learned, learn, percent, probability, step, tail
from watchdogd.rules.state import EvalState, no_counts


def start_sequential(rule: Rule, started_at: float, history: Iterable[Sample]) -> EvalState:
    """The state when a deploy starts at ``started_at``, learned from the samples polled before it."""
    spec = rule.sequential
    if spec is None:
        raise RuleError(f"rule '{rule.name}': not a sequential rule")
    low = started_at - spec.history
    counts = [s.counts for s in history if s.counts is not None and low <= s.time < started_at]
    learned = learn(spec, counts, _fd(spec.history))
    bound = rule.condition.threshold
    if isinstance(learned, str):
        return EvalState(NO_DATA, started_at, learned, started_at, bound, None)
    return EvalState(
        NO_DATA,
        started_at,
        f"not evaluated yet; {_healthy(learned, spec.healthy is not None, _fd(spec.history))}",
        started_at,
        bound,
        learned.rate,
        evidence=(
            learned.dispersion,
            learned.estimate,
            *(0.0, 0.0, 0.0, started_at) * len(spec.alternatives),
        ),
    )


def evaluate_sequential(
    rule: Rule, state: EvalState, sample: Sample, now: float
) -> tuple[EvalState, tuple[Transition, ...]]:
    """One poll's counts weighed: the next state and its transitions (see ``evaluate``)."""
    spec = rule.sequential
    if spec is None:
        raise RuleError(f"rule '{rule.name}': not a sequential rule")
    at = sample.time
    rate = state.baseline
    bound = state.threshold
    alternatives = spec.alternatives
    if rate is None or bound is None or len(state.evidence) != 2 + 4 * len(alternatives):
        # nothing to weigh the counts against: no verdict, and the reason stays
        return state._replace(last_eval=now, last_sample=at), ()
    if sample.counts is None:
        return no_counts(rule, state, now, at, sample.reason)
    errors, requests = sample.counts
    phi = state.evidence[0]
    previous = state.last_sample if state.last_sample is not None else state.started_at
    evidence: list[float] = list(state.evidence[:2])
    for i, bad in enumerate(alternatives):
        before, seen_errors, seen_requests, since = state.evidence[2 + 4 * i : 6 + 4 * i]
        stat_i = min(step(before, errors, requests, rate, bad, phi), CAP * bound)
        if stat_i <= 0:
            evidence += [0.0, 0.0, 0.0, at]
        elif before <= 0:  # a new stretch: this poll's counts, taken since the previous poll
            evidence += [stat_i, errors, requests, previous]
        else:
            evidence += [stat_i, seen_errors + errors, seen_requests + requests, since]
    stat, lead = _leading(tuple(evidence))
    current = state.state
    if (stat >= bound and evidence[lead + 2] >= spec.min_requests) or (current is FIRING and stat > 0):
        new = FIRING
    elif stat >= bound / 2:
        new = PENDING
    else:
        new = OK
    kept = state._replace(
        last_eval=now, last_sample=at, value=stat, evidence=tuple(evidence), missing_since=None
    )
    if new is current:
        return kept, ()
    reason = explain_sequential(rule, kept, new)
    moved = kept._replace(state=new, since=now, reason=reason)
    return moved, (Transition(rule.name, now, current, new, stat, bound, reason, (stat,)),)


def _leading(evidence: tuple[float, ...]) -> tuple[float, int]:
    """The largest CUSUM and where its stretch starts in ``evidence``."""
    best, lead = 0.0, 2
    for at in range(2, len(evidence), 4):
        if evidence[at] > best:
            best, lead = evidence[at], at
    return best, lead


def explain_sequential(rule: Rule, state: EvalState, new: RuleState) -> str:
    """The evidence in words, as a proposal carries it."""
    spec = rule.sequential
    rate = state.baseline
    if spec is None or rate is None or state.threshold is None or len(state.evidence) < 6:
        return state.reason
    phi = state.evidence[0]
    stat, lead = _leading(state.evidence)
    errors, requests, since = state.evidence[lead + 1 : lead + 4]
    bad = spec.alternatives[(lead - 2) // 4]
    if requests <= 0 or stat <= 0:
        return f"no more errors than a healthy {percent(rate)} makes"
    chance = tail(errors, requests, rate, phi)
    text = (
        f"{errors:g} errors in {requests:g} requests since {_clock(since)}; at a healthy {percent(rate)}"
        f" this happens with probability {probability(chance)}"
    )
    if phi > 1.0001:
        text += f" (errors {phi:.3g}x as bursty as independent ones)"
    odds = f"the odds of a {percent(bad)} rate over a healthy one are 10^{stat / math.log(10):.1f}"
    bound = f"10^{state.threshold / math.log(10):.1f}"
    if new is FIRING:
        return f"{text}; {odds}, past the {bound} that fires (false rollback {_alpha(rule)})"
    if new is PENDING:
        return f"{text}; {odds}, half way to the {bound} that fires"
    return f"{text}; {odds}, under the {bound} that fires"


def _healthy(learned: Learned, written: bool, history: str) -> str:
    if written:
        return f"healthy rate {percent(learned.rate)} (written), dispersion {learned.dispersion:.3g}"
    return (
        f"healthy rate at most {percent(learned.rate)} ({learned.errors:g} errors in {learned.requests:g}"
        f" requests in the {history} before the deploy), dispersion {learned.dispersion:.3g}"
    )


def _alpha(rule: Rule) -> str:
    spec = rule.sequential
    if spec is None:
        return ""
    return f"{percent(spec.false_rollback)} over {spec.evaluations} polls"


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")
