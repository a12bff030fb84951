"""Why a rule is where it is, in words: the reason every state and transition carries."""

from __future__ import annotations

from watchdogd.config.types import format_duration as _fd
from watchdogd.model import RuleState
from watchdogd.rules.rule import _EPS, FIRING, PENDING, Rule
from watchdogd.rules.state import EvalState


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
        floor = rule.baseline_min
        if floor is not None and floor >= state.baseline + abs(state.baseline) * rule.baseline_tolerance:
            text += f" (baseline {state.baseline:g} {_tolerance(rule)}, floor {floor:g})"
        else:
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
