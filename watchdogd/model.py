"""The data watchdogd's parts pass to each other: frozen, no I/O.

Times are float seconds. The rule engine does not care which clock they come
from (epoch or monotonic), only that they never go backwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class RuleState(StrEnum):
    """Where a rule stands; the numbers are ``watchdogd_rule_state``'s values."""

    OK = "ok"
    """The condition does not hold on the latest data."""
    PENDING = "pending"
    """The condition holds, but not yet for long enough (or not often enough)."""
    FIRING = "firing"
    """The rule has decided: the deploy is bad (or, for notify rules, worth a message)."""
    NO_DATA = "no_data"
    """No verdict: nothing evaluated yet, the source gave no data, or there is no baseline."""

    @property
    def metric_value(self) -> int:
        return _METRIC_VALUES[self]


_METRIC_VALUES = {RuleState.OK: 0, RuleState.PENDING: 1, RuleState.FIRING: 2, RuleState.NO_DATA: 3}


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a source at ``time``; ``value`` None means no data, ``reason`` says why."""

    time: float
    value: float | None
    reason: str | None = None

    @classmethod
    def missing(cls, time: float, reason: str) -> Sample:
        return cls(time, None, reason)

    @property
    def has_value(self) -> bool:
        """A usable number: not missing and not NaN (NaN is treated as no data)."""
        return self.value is not None and not math.isnan(self.value)


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule changed state: when, from what to what, on which value(s), against what.

    ``value`` is the value at this evaluation (None without data); ``values``
    holds every value the decision rests on (the failing values counted by a
    ``failures`` rule, otherwise just ``value``); ``threshold`` is the number
    compared with (the effective one for a baseline rule, the clear threshold
    when a clear condition ended the firing); ``reason`` says it in words.
    """

    rule: str
    at: float
    from_state: RuleState
    to_state: RuleState
    value: float | None
    threshold: float | None
    reason: str
    values: tuple[float | None, ...] = ()

    @property
    def fired(self) -> bool:
        """This transition entered firing."""
        return self.to_state is RuleState.FIRING and self.from_state is not RuleState.FIRING
