"""``evaluate``: one sample at one time, the next state and its transitions. Reads no clock."""

from __future__ import annotations

from watchdogd.errors import RuleError
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.rules.explain import _explain, _missing_reason
from watchdogd.rules.latency_rule import evaluate_latency
from watchdogd.rules.rule import _EPS, FIRING, NO_DATA, OK, PENDING, Rule
from watchdogd.rules.sequential_rule import evaluate_sequential
from watchdogd.rules.state import EvalState


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
    if rule.sequential is not None:
        return evaluate_sequential(rule, state, sample, now)
    if rule.latency is not None:
        return evaluate_latency(rule, state, sample, now)
    state = _skip_held(rule, state, now)
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


def held(rule: Rule, missing_since: float | None, at: float) -> bool:
    """Whether a missing sample at ``at``, in a gap since ``missing_since``, is held: counted as nothing."""
    if missing_since is None:
        return False
    return rule.missing_result == "hold" or at - missing_since < rule.missing_after - _EPS


def _skip_held(rule: Rule, state: EvalState, now: float) -> EvalState:
    """Move the ``for`` and ``keep_firing_for`` timers on by the time since a held evaluation.

    Each evaluation vouches for the time until the next one: after a held one
    (missing data under ``hold``, or the first ``after`` of a gap) that time is
    no evidence either way, so it counts toward neither timer, as downtime does
    in ``resume``. A gap counted as failing or passing is evidence and is not
    skipped.
    """
    last = state.last_eval
    if last is None or (state.active_since is None and state.clearing_since is None):
        return state
    if not held(rule, state.missing_since, last):
        return state
    skipped = now - last
    return state._replace(
        active_since=None if state.active_since is None else state.active_since + skipped,
        clearing_since=None if state.clearing_since is None else state.clearing_since + skipped,
    )


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
