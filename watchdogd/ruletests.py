"""``watchdogd test-rules``: rules checked offline against written series.

Modelled on ``promtool test rules``. A test file names config files, an
interval, and tests; each test gives series (per source or per rule) and
expects states at times and the time a rollback is proposed. The rules run
in the real engine over time stepped by hand, so a passing test file is what
the daemon would do with those values.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from watchdogd import decisions
from watchdogd.config.loader import load_config, parse_yaml, pydantic_problems
from watchdogd.config.models import Config, Model, ServiceConfig
from watchdogd.config.types import Duration, format_duration
from watchdogd.errors import ConfigError, ConfigProblem, RuleError, SeriesError
from watchdogd.model import Sample
from watchdogd.replay import Replay, bucket_samples, counter_samples, replay_rule
from watchdogd.rules import Rule, compile_rule
from watchdogd.series import format_series, parse_series

CONTEXT_STEPS = 4
"""Evaluations shown on each side of a failed expectation."""


class SeriesSpec(Model):
    source: str | None = Field(None, description="Feeds every rule that reads this source.")
    rule: str | None = Field(None, description="Feeds this rule only (wins over its source's series).")
    service: str | None = None
    values: str | None = Field(None, description="promtool notation: '0.01x8 0.2x30', '_' missing, '_x3'.")
    errors: str | None = Field(
        None, description="A sequential rule's error counter, cumulative, in promtool notation: '0+1x60'."
    )
    total: str | None = Field(
        None, description="A sequential rule's request counter, cumulative, like '0+100x60'."
    )
    buckets: dict[str, str] | None = Field(
        None,
        description="A latency rule's histogram: each le bucket's cumulative counter, like"
        " {'0.1': '0+90x60', '+Inf': '0+100x60'}.",
    )

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, buckets: dict[str, str] | None) -> dict[str, str] | None:
        if buckets is None:
            return None
        lengths = set()
        for le, text in buckets.items():
            try:
                bound = float(le)
            except ValueError:
                raise ValueError(f"bucket '{le}': an le is a number or +Inf") from None
            if math.isnan(bound):
                raise ValueError(f"bucket '{le}': an le is a number or +Inf")
            try:
                lengths.add(len(parse_series(text)))
            except SeriesError as exc:
                raise ValueError(f"bucket '{le}': {exc}") from None
        if not any(math.isinf(float(le)) for le in buckets):
            raise ValueError("the buckets need a '+Inf' one: it counts every request")
        if len(lengths) > 1:
            raise ValueError("every bucket needs as many values")
        return buckets

    @field_validator("values", "errors", "total")
    @classmethod
    def _values(cls, text: str | None) -> str | None:
        if text is None:
            return None
        try:
            parsed = parse_series(text)
        except SeriesError as exc:
            raise ValueError(str(exc)) from None
        if not parsed:
            raise ValueError("no values: write at least one, like '0.01x8 0.2x30'")
        return text

    @model_validator(mode="after")
    def _target(self) -> SeriesSpec:
        if self.source is None and self.rule is None:
            raise ValueError("give the source or the rule these values feed")
        counters = (self.errors is not None) + (self.total is not None)
        if counters == 1:
            raise ValueError("give both errors and total, the counters a sequential rule divides")
        if (self.values is None) == (counters == 0) and self.buckets is None:
            raise ValueError("give either values, or errors and total (for a sequential rule)")
        if self.buckets is not None and (self.values is not None or counters):
            raise ValueError("give buckets (for a latency rule) alone, without values or counters")
        if self.errors is not None and self.total is not None:
            errors, total = parse_series(self.errors), parse_series(self.total)
            if len(errors) != len(total):
                raise ValueError(f"errors has {len(errors)} values and total {len(total)}: give as many")
        return self

    def series(self) -> _Series:
        """The values, or the (errors, total) counters, or the buckets."""
        if self.buckets is not None:
            return Buckets(
                tuple((float(le), parse_series(text)) for le, text in sorted(self.buckets.items(), key=_le))
            )
        if self.errors is not None and self.total is not None:
            return parse_series(self.errors), parse_series(self.total)
        return parse_series(self.values or "")


class Expectation(Model):
    rule: str | None = None
    service: str | None = None
    at: Duration | None = Field(None, ge=0)
    state: Literal["ok", "pending", "firing", "no_data"] | None = None
    proposal_at: Duration | Literal["never"] | None = Field(
        None,
        description="When the service's rollback is proposed (its first rollback rule fires), or 'never'.",
    )

    @model_validator(mode="after")
    def _shape(self) -> Expectation:
        if self.proposal_at is not None:
            if self.at is not None or self.state is not None or self.rule is not None:
                raise ValueError("a proposal_at expectation takes only 'service'")
        elif self.rule is None or self.at is None or self.state is None:
            raise ValueError("expect either {rule, at, state} or {proposal_at}")
        return self


class RuleTest(Model):
    name: str
    interval: Duration | None = Field(None, gt=0)
    deploy_at: Duration = Field(0.0, ge=0, description="Earlier values only make baselines.")
    series: tuple[SeriesSpec, ...] = Field(min_length=1)
    expect: tuple[Expectation, ...] = Field(min_length=1)


class RuleTestFile(Model):
    rule_files: tuple[Path, ...] = Field(min_length=1)
    interval: Duration = Field(15.0, gt=0)
    tests: tuple[RuleTest, ...] = Field(min_length=1)


@dataclass
class Outcome:
    """A test's result: its failures as readable blocks of lines."""

    name: str
    failures: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0
    """How long it took to run (for JUnit reports)."""

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Buckets:
    """A latency rule's series: each bucket's upper bound and cumulative counter."""

    counters: tuple[tuple[float, list[float | None]], ...]

    def __len__(self) -> int:
        return len(self.counters[0][1]) if self.counters else 0


def _le(item: tuple[str, str]) -> float:
    return float(item[0])


_Series = list[float | None] | tuple[list[float | None], list[float | None]] | Buckets
"""Values, or the (errors, total) counters a sequential rule reads, or a latency rule's buckets."""


def _kind(series: _Series) -> str:
    return "counters" if isinstance(series, tuple) else "buckets" if isinstance(series, Buckets) else "values"


@dataclass(frozen=True)
class _Target:
    service: str
    rule: Rule
    series: _Series

    @property
    def length(self) -> int:
        return len(self.series[0]) if isinstance(self.series, tuple) else len(self.series)


def load_test_file(path: str | Path) -> tuple[RuleTestFile, Config]:
    """The test file and the config it names; ConfigError for either being wrong."""
    file = Path(path)
    name = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem(name, None, "", f"cannot read: {reason}")]) from None
    data, lines = parse_yaml(text, name)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(name, 1, "", "a test file is a mapping with rule_files and tests")])
    try:
        tests = RuleTestFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(exc, data, lines, name, root=RuleTestFile)) from None
    configs = [load_config(p if p.is_absolute() else file.parent / p) for p in tests.rule_files]
    return tests, _merge(configs, name)


def _merge(configs: list[Config], name: str) -> Config:
    if len(configs) == 1:
        return configs[0]
    sources: dict[str, Any] = {}
    services: dict[str, ServiceConfig] = {}
    for config in configs:
        for key, source in config.sources.items():
            if key in sources and sources[key] != source:
                raise ConfigError(
                    [ConfigProblem(name, None, "rule_files", f"source '{key}' differs between files")]
                )
            sources[key] = source
        for key, service in config.services.items():
            if key in services:
                raise ConfigError(
                    [ConfigProblem(name, None, "rule_files", f"service '{key}' is in several files")]
                )
            services[key] = service
    return configs[0].model_copy(update={"sources": sources, "services": services})


def run_test(test: RuleTest, config: Config, default_interval: float) -> Outcome:
    """Run one test; an expectation that names nothing known is a failure that says so."""
    outcome = Outcome(test.name)
    interval = test.interval or default_interval
    targets, problems = _targets(test, config, interval)
    outcome.failures.extend([problem] for problem in problems)
    replays: dict[tuple[str, str], Replay] = {}
    end = max(
        [t.length - 1 for t in targets]
        + [round(e.at / interval) for e in test.expect if e.at is not None]
        + [round(e.proposal_at / interval) for e in test.expect if isinstance(e.proposal_at, float)]
        + [0]
    )
    for target in targets:
        if isinstance(target.series, Buckets):
            times = [i * interval for i in range(end + 1)]
            samples = bucket_samples(target.series.counters, times)
        elif isinstance(target.series, tuple):
            times = [i * interval for i in range(end + 1)]
            padded = [[*c, *[None] * (end + 1 - len(c))] for c in target.series]
            samples = counter_samples(padded[0], padded[1], times)
        else:
            samples = [_sample(target.series, i, interval) for i in range(end + 1)]
        try:
            replays[(target.service, target.rule.name)] = replay_rule(target.rule, samples, test.deploy_at)
        except RuleError as exc:
            outcome.failures.append([str(exc)])
    for expectation in test.expect:
        failure = _check(expectation, replays, config, interval)
        if failure:
            outcome.failures.append(failure)
    return outcome


def _sample(series: list[float | None], index: int, interval: float) -> Sample:
    at = index * interval
    if index >= len(series):
        return Sample(at, None, "after the end of the test series")
    value = series[index]
    return Sample(at, None, "'_' in the test series") if value is None else Sample(at, value)


def _targets(test: RuleTest, config: Config, interval: float) -> tuple[list[_Target], list[str]]:
    """Each rule that has a series, with the series it gets (its own, else its source's)."""
    problems: list[str] = []
    by_source: dict[tuple[str | None, str, str], _Series] = {}
    by_rule: dict[tuple[str | None, str], _Series] = {}
    for spec in test.series:
        parsed = spec.series()
        if spec.rule is not None:
            if not _rules_named(config, spec.service, spec.rule):
                problems.append(f"series for rule '{spec.rule}': no such rule in the config")
            by_rule[(spec.service, spec.rule)] = parsed
        elif spec.source is not None:
            if spec.source not in config.sources:
                problems.append(f"series for source '{spec.source}': no such source in the config")
            by_source[(spec.service, spec.source, _kind(parsed))] = parsed
    targets: list[_Target] = []
    for service_name, service in config.services.items():
        for rule_config in service.rules:
            counters = (
                "counters"
                if rule_config.sequential is not None
                else "buckets"
                if rule_config.latency is not None
                else "values"
            )
            own = by_rule.get((service_name, rule_config.name)) or by_rule.get((None, rule_config.name))
            if own is not None and _kind(own) != counters:
                need = {"counters": "errors and total", "buckets": "buckets"}.get(counters, "values")
                problems.append(
                    f"rule '{rule_config.name}' in service '{service_name}' needs a series of {need}"
                )
                continue
            # a source's counters feed its sequential rules, its values the others
            shared = by_source.get((service_name, rule_config.source, counters)) or by_source.get(
                (None, rule_config.source, counters)
            )
            values = own if own is not None else shared
            if values is None:
                continue
            try:
                rule = compile_rule(rule_config, interval=interval, window=_window(config, service))
            except RuleError as exc:
                problems.append(str(exc))
                continue
            targets.append(_Target(service_name, rule, values))
    return targets, problems


def _window(config: Config, service: ServiceConfig) -> float:
    """The service's watch window: what a sequential rule spreads its false-rollback rate over."""
    return service.window or config.defaults.window


def _rules_named(config: Config, service: str | None, name: str) -> list[str]:
    return [
        service_name
        for service_name, svc in config.services.items()
        if (service is None or service == service_name) and any(r.name == name for r in svc.rules)
    ]


def _check(
    expectation: Expectation, replays: dict[tuple[str, str], Replay], config: Config, interval: float
) -> list[str]:
    if expectation.proposal_at is not None:
        return _check_proposal(expectation, replays, config)
    assert expectation.rule is not None and expectation.at is not None and expectation.state is not None
    services = _rules_named(config, expectation.service, expectation.rule)
    if not services:
        return [f"rule '{expectation.rule}': no such rule in the config"]
    if len(services) > 1:
        return [f"rule '{expectation.rule}' is in services {', '.join(services)}: add 'service' to it"]
    replay = replays.get((services[0], expectation.rule))
    if replay is None:
        return [f"rule '{expectation.rule}': no series feeds it (give its source or the rule a series)"]
    got = replay.state_at(expectation.at)
    if got.value == expectation.state:
        return []
    head = (
        f"rule '{expectation.rule}' at {format_duration(expectation.at)}: "
        f"expected {expectation.state}, got {got.value}"
    )
    return [head, *_timeline(replay, expectation.at, interval)]


def _check_proposal(
    expectation: Expectation, replays: dict[tuple[str, str], Replay], config: Config
) -> list[str]:
    services = [expectation.service] if expectation.service else list(config.services)
    if expectation.service is not None and expectation.service not in config.services:
        return [f"proposal_at: no service '{expectation.service}' in the config"]
    if len(services) > 1:
        return [f"proposal_at: the config has services {', '.join(services)}: add 'service'"]
    service = services[0]
    proposal = first_proposal(service, replays)
    want = expectation.proposal_at
    if want == "never":
        if proposal is None:
            return []
        at, rule = proposal
        return [
            f"service '{service}': expected no rollback proposal, "
            f"got one at {format_duration(at)} (rule '{rule}')",
            *_timeline(replays[(service, rule)], at, None),
        ]
    assert isinstance(want, float)
    if proposal is not None and math.isclose(proposal[0], want, abs_tol=1e-6):
        return []
    if proposal is None:
        lines = [f"service '{service}': expected a rollback proposal at {format_duration(want)}, got none"]
        for (svc, _), replay in sorted(replays.items()):
            if svc == service and replay.rule.action == "rollback":
                lines.extend(_timeline(replay, want, None))
        return lines
    at, rule = proposal
    return [
        f"service '{service}': expected a rollback proposal at {format_duration(want)}, "
        f"got one at {format_duration(at)} (rule '{rule}')",
        *_timeline(replays[(service, rule)], min(at, want), None),
    ]


def first_proposal(service: str, replays: dict[tuple[str, str], Replay]) -> tuple[float, str] | None:
    """When a service's rollback is proposed: the first rollback rule to fire, and which it was."""
    fired = {
        rule_name: replay.fired_at()
        for (svc, rule_name), replay in replays.items()
        if svc == service and replay.rule.action == "rollback"
    }
    return decisions.first_proposal(fired)


def _timeline(replay: Replay, around: float, interval: float | None) -> Iterator[str]:
    """The evaluations around ``around``: time, value, state, and the reason of each change."""
    steps = replay.steps
    if not steps:
        yield "  (no evaluations)"
        return
    center = min(range(len(steps)), key=lambda i: abs(steps[i].at - around))
    low, high = max(0, center - CONTEXT_STEPS), min(len(steps), center + CONTEXT_STEPS + 1)
    yield f"  timeline of '{replay.rule.name}' (values: {format_series([s.value for s in steps])}):"
    for step in steps[low:high]:
        mark = ">" if step is steps[center] else " "
        value = "_" if step.value is None else f"{step.value:g}"
        line = f"  {mark} {format_duration(step.at):>8}  {value:>10}  {step.state.value}"
        for transition in step.transitions:
            line += f"  ({transition.from_state} -> {transition.to_state}: {transition.reason})"
        yield line


def selected(name: str, pattern: str | None) -> bool:
    """Whether a test named ``name`` is picked by ``-k PATTERN``.

    A pattern with ``*``, ``?`` or ``[`` is a glob on the whole name; any other
    is a substring. Both ignore case.
    """
    if pattern is None:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name.casefold(), pattern.casefold())
    return pattern.casefold() in name.casefold()


def run_file(path: str | Path, pattern: str | None = None) -> list[Outcome]:
    """The tests of a file that ``pattern`` selects (default: all); ConfigError when the file or its config
    cannot be used."""
    tests, config = load_test_file(path)
    outcomes = []
    for test in tests.tests:
        if not selected(test.name, pattern):
            continue
        started = time.perf_counter()
        outcome = run_test(test, config, tests.interval)
        outcome.seconds = time.perf_counter() - started
        outcomes.append(outcome)
    return outcomes
