"""How many evaluations per second the pure rule engine does on one core.

Builds 2,000 rules of mixed kinds, gives each a deterministic pseudo-random
series with some missing samples, and times ``evaluate`` alone: building the
rules and the series is left out of the measurement.

Run: ``.venv/bin/python bench/rules.py [--rules N] [--steps N] [--seed N]``
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from watchdogd.config.models import RuleConfig
from watchdogd.model import Sample
from watchdogd.rules import EvalState, Rule, compile_rule, evaluate, start

INTERVAL = 15.0

# One entry per kind of rule: its config, then the (low, high) range of its
# values and the chance that a value falls in the failing part of the range.
KINDS: list[tuple[dict[str, Any], tuple[float, float], float]] = [
    ({"condition": "> 0.05", "for": "5m"}, (0.0, 0.1), 0.3),
    ({"condition": "> 0.05", "failures": {"count": 3, "of": 5}}, (0.0, 0.1), 0.3),
    ({"condition": "> 1.0", "failures": {"count": 4}}, (0.0, 2.0), 0.1),
    ({"condition": ">= 1", "over": "1m", "immediate": True}, (0.0, 3.0), 0.05),
    ({"condition": ">", "baseline": {"before": "30m", "tolerance": "10%"}, "for": "2m"}, (0.5, 1.5), 0.3),
    (
        {"condition": "> 0.05", "clear_condition": "< 0.02", "keep_firing_for": "1m", "for": "1m"},
        (0.0, 0.1),
        0.4,
    ),
    ({"absent_for": "30m", "pattern": "SystemGate"}, (0.0, 1.0), 0.01),
    ({"condition": "> 0.8", "for": "1m", "on_missing": {"after": "1m", "result": "fail"}}, (0.0, 1.0), 0.2),
]


def build_rules(count: int) -> list[tuple[Rule, float | None]]:
    """``count`` rules cycling through ``KINDS``, each with its baseline (or None)."""
    rules = []
    for index in range(count):
        config, _, _ = KINDS[index % len(KINDS)]
        rule = compile_rule(RuleConfig.model_validate({"name": f"r{index}", "source": "s", **config}))
        rules.append((rule, 1.0 if rule.needs_baseline else None))
    return rules


def build_series(count: int, steps: int, seed: int, missing: float) -> list[list[Sample]]:
    """One series per rule: mostly good values, incidents of bad ones, scattered and long gaps.

    Incidents (about one step in 40 starts or ends one) make ``for`` windows
    complete; outages of a few steps make ``on_missing`` gaps long enough.
    """
    rng = random.Random(seed)
    series = []
    for index in range(count):
        kind = index % len(KINDS)
        _, (low, high), bad = KINDS[kind]
        middle = (low + high) / 2
        incident = False
        outage = 0
        samples = []
        for step in range(steps):
            at = step * INTERVAL
            if rng.random() < 1 / 40:
                incident = not incident
            if outage == 0 and rng.random() < 1 / 200:
                outage = rng.randint(3, 8)
            roll = rng.random()
            if outage or roll < missing:
                outage = max(0, outage - 1)
                samples.append(Sample.missing(at, "timeout"))
                continue
            failing = rng.random() < (0.9 if incident else bad)
            if kind == 6:
                # A log line count: for an absent_for rule, a match is the good case.
                samples.append(Sample(at, 0.0 if incident or rng.random() > 0.05 else 1.0))
            elif failing:
                samples.append(Sample(at, rng.uniform(middle, high) * 1.2))
            else:
                samples.append(Sample(at, rng.uniform(low, middle) * 0.8))
        series.append(samples)
    return series


def run(rules: list[tuple[Rule, float | None]], series: list[list[Sample]]) -> tuple[int, int, float]:
    """Evaluate every rule over its series: (evaluations, firing transitions, seconds)."""
    states: list[EvalState] = [start(rule, 0.0, baseline) for rule, baseline in rules]
    evaluations = 0
    fired = 0
    began = time.perf_counter()
    for index, (rule, _) in enumerate(rules):
        state = states[index]
        for sample in series[index]:
            state, transitions = evaluate(rule, state, sample, sample.time)
            for transition in transitions:
                if transition.fired:
                    fired += 1
        evaluations += len(series[index])
        states[index] = state
    return evaluations, fired, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=480, help="evaluations per rule (480: 2h at 15s)")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--missing", type=float, default=0.05, help="share of missing samples")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args()

    rules = build_rules(args.rules)
    series = build_series(args.rules, args.steps, args.seed, args.missing)
    runs = [run(rules, series) for _ in range(max(1, args.repeat))]
    evaluations, fired, seconds = min(runs, key=lambda result: result[2])
    print(f"rules: {args.rules}, evaluations: {evaluations:,}, best of {args.repeat}: {seconds:.3f} s")
    print(f"evaluations per second: {evaluations / seconds:,.0f}")
    print(f"firing transitions: {fired:,}")


if __name__ == "__main__":
    main()
