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

from watchdogd.rules.engine import condition_now, evaluate
from watchdogd.rules.latency_rule import start_latency
from watchdogd.rules.rule import MissingResult, Rule, compile_rule, fingerprint
from watchdogd.rules.sequential_rule import start_sequential
from watchdogd.rules.state import (
    EvalState,
    baseline_mean,
    baseline_threshold,
    dump_state,
    load_state,
    resume,
    start,
)

__all__ = [
    "EvalState",
    "MissingResult",
    "Rule",
    "baseline_mean",
    "baseline_threshold",
    "compile_rule",
    "condition_now",
    "dump_state",
    "evaluate",
    "fingerprint",
    "load_state",
    "resume",
    "start",
    "start_latency",
    "start_sequential",
]
