"""``watchdogd replay`` of the rules that learn from counts before a deploy: a sequential rule's two
counters here, a latency rule's bucket counters in watchdogd/replay_latency.py, and the sweep of
deploys over a history both share.

A sequential rule reads counts (errors, requests) between polls, so its history is two cumulative
counters: from a Prometheus server (range queries of ``sum(errors)`` and ``sum(total)``; a counter
reset shows as the sum going down and counts from zero, as exactly as the sum allows), or from a
CSV file of ``timestamp,errors,total`` rows.

With ``--deploy-at`` the rule is replayed from that deploy on, as for any rule. Without it, a
deploy is placed every ``--every`` (default: the rule's watch window) from the first time a
full ``history`` lies before it, each learned and watched over its window: how often the rule
would have rolled back a deploy on that history. When the history was healthy, every one of
those is a false rollback.
"""

from __future__ import annotations

import bisect
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from watchdogd.config.models import Config, PrometheusSource, RuleConfig, ServiceConfig
from watchdogd.config.types import format_duration
from watchdogd.errors import WatchdogError
from watchdogd.model import RuleState, Sample
from watchdogd.replay import (
    SeriesFileError,
    counter_samples,
    csv_rows,
    describe_replay,
    grace_of,
    interval_of,
    learned,
    on_ticks,
    query_range,
    read_text,
    replay_rule,
)
from watchdogd.rules import Rule, compile_rule, evaluate

FromCsv = Callable[[str, float], list[Sample]]
"""A rule's history from a file: (path, step) to samples."""
FromPrometheus = Callable[[str, float, float, float, float], list[Sample]]
"""A rule's history from a Prometheus server: (url, start, end, step, timeout) to samples."""


@dataclass(frozen=True, slots=True)
class Sweep:
    """Deploys placed over a history: how many, which fired and when, which could not learn."""

    deploys: int
    fired: tuple[tuple[float, float, str], ...]
    """(deploy time, seconds after it the rule fired, the evidence)."""
    no_data: tuple[tuple[float, str], ...]


def counters_from_prometheus(
    url: str, errors: str, total: str, start_at: float, end_at: float, step: float, timeout: float
) -> list[Sample]:
    """The two counters summed over their series, one sample of counts per step."""
    series = [
        query_range(url, f"sum({selector})", start_at, end_at, step, "sum", timeout)
        for selector in (errors, total)
    ]
    return _ticks(series[0], series[1], step)


def counters_from_csv(path: str | Path, step: float) -> list[Sample]:
    """``timestamp,errors,total`` rows (a header line allowed) as samples of counts."""
    name = str(path)
    bad: list[tuple[float, float | None]] = []
    total: list[tuple[float, float | None]] = []
    for number, at, row in csv_rows(read_text(path), name, "timestamp,errors,total"):
        try:
            bad.append((at, float(row[1]) if row[1].strip() else None))
            total.append((at, float(row[2]) if row[2].strip() else None))
        except ValueError:
            raise SeriesFileError(f"{name}:{number}: errors and total must be numbers") from None
    if not bad:
        raise SeriesFileError(f"{name}: no rows in the file")
    return _ticks(bad, total, step)


def _ticks(
    errors: list[tuple[float, float | None]], total: list[tuple[float, float | None]], step: float
) -> list[Sample]:
    if not errors or not total:
        raise SeriesFileError("the counters have no points")
    first = min(errors[0][0], total[0][0])
    last = max(errors[-1][0], total[-1][0])
    bad = on_ticks(errors, first, last, step)
    all_ = on_ticks(total, first, last, step)
    return counter_samples([s.value for s in bad], [s.value for s in all_], [s.time for s in bad])


def sweep(rule: Rule, samples: list[Sample], every: float, window: float) -> Sweep:
    """A deploy every ``every`` from the first one with a full history before it (a sequential or a
    latency rule: what it learns from), each learned from the samples before it and watched ``window``."""
    history = rule.learns_from
    if (rule.sequential is None and rule.latency is None) or not samples:
        return Sweep(0, (), ())
    times = [s.time for s in samples]
    deploy = samples[0].time + history
    fired: list[tuple[float, float, str]] = []
    no_data: list[tuple[float, str]] = []
    deploys = 0
    while deploy < times[-1]:
        deploys += 1
        lo, at = bisect.bisect_left(times, deploy - history), bisect.bisect_left(times, deploy)
        state = learned(rule, deploy, samples[lo:at])
        assert state is not None
        if state.baseline is None:
            no_data.append((deploy, state.reason))
        else:
            for sample in samples[at : bisect.bisect_right(times, deploy + window)]:
                state, _ = evaluate(rule, state, sample, sample.time)
                if state.state is RuleState.FIRING:
                    fired.append((deploy, sample.time - deploy, state.reason))
                    break
        deploy += every
    return Sweep(deploys, tuple(fired), tuple(no_data))


def describe_sweep(result: Sweep, every: float, window: float) -> list[str]:
    """The sweep in lines: each would-be rollback with its evidence, then the count."""
    lines = []
    for deploy, after, reason in result.fired:
        lines.append(f"deploy at {_utc(deploy)}: would roll back {format_duration(after)} after it: {reason}")
    for deploy, reason in result.no_data[:5]:
        lines.append(f"deploy at {_utc(deploy)}: no_data: {reason}")
    learned = result.deploys - len(result.no_data)
    summary = (
        f"{result.deploys} deploys, one every {format_duration(every)},"
        f" each watched {format_duration(window)}:"
        f" {len(result.fired)} would have been rolled back"
    )
    if learned:
        summary += f" ({len(result.fired) / learned:.1%} of the {learned} that could learn)"
    if result.no_data:
        summary += f"; {len(result.no_data)} could not learn (no_data)"
    lines.append(summary)
    return lines


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replay_sequential(
    config: Config, service_name: str, service: ServiceConfig, rule_config: RuleConfig, args: Namespace
) -> list[str]:
    """``watchdogd replay`` of a sequential rule: the lines to print; WatchdogError says what is wrong."""
    spec = rule_config.sequential
    assert spec is not None
    window = spec.window or service.window or config.defaults.window

    def from_prometheus(
        url: str, start_at: float, end_at: float, step: float, timeout: float
    ) -> list[Sample]:
        return counters_from_prometheus(url, spec.errors, spec.total, start_at, end_at, step, timeout)

    return replay_learning(
        config, service_name, rule_config, args, window, counters_from_csv, from_prometheus
    )


def replay_learning(
    config: Config,
    service_name: str,
    rule_config: RuleConfig,
    args: Namespace,
    window: float,
    from_csv: FromCsv,
    from_prometheus: FromPrometheus,
) -> list[str]:
    """``watchdogd replay`` of a rule that learns before a deploy, its history read by ``from_csv``
    (``--series``) or ``from_prometheus``: from ``--deploy-at``, or a sweep of deploys."""
    service = config.services[service_name]
    step = args.step if args.step is not None else interval_of(config, service)
    rule = compile_rule(rule_config, interval=step, window=window)
    if args.series is not None:
        samples = from_csv(args.series, step)
    else:
        source = config.sources.get(rule_config.source)
        if args.start is None or args.end is None:
            raise WatchdogError("--prometheus needs --start and --end")
        if args.prometheus:
            url, timeout = args.prometheus, 30.0
        elif isinstance(source, PrometheusSource):
            url, timeout = source.url.secret(), source.timeout
        else:
            raise WatchdogError(
                f"rule '{rule.name}' does not read a prometheus source: give --prometheus URL"
            )
        samples = from_prometheus(url, args.start, args.end, step, timeout)
    head = f"rule {service_name}/{rule.name}, one evaluation every {format_duration(step)}"
    if args.deploy_at is not None:
        replay = replay_rule(rule, samples, args.deploy_at)
        return [head, *describe_replay(replay, grace_of(config, service_name, rule_config), clock=args.clock)]
    every = args.every if getattr(args, "every", None) else window
    return [head, *describe_sweep(sweep(rule, samples, every, window), every, window)]
