"""Rules run over recorded values: the engine stepped through a series by hand.

``replay_rule`` is what ``watchdogd test-rules`` and ``watchdogd replay`` share:
one evaluation per tick, the baseline taken from the ticks before the deploy,
every transition kept. Reading the series (CSV, JSON, a Prometheus range
query) and printing are here too; the engine itself is ``watchdogd.rules``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watchdogd.config.models import Config, RuleConfig, ServiceConfig
from watchdogd.config.types import format_duration
from watchdogd.decisions import policy_for, proposal
from watchdogd.errors import SeriesError, WatchdogError
from watchdogd.model import RuleState, Sample, Transition
from watchdogd.rules import EvalState, Rule, baseline_mean, evaluate, start, start_latency, start_sequential
from watchdogd.rules.distribution import from_cumulative

MAX_RANGE_POINTS = 11_000
"""Prometheus refuses more points per series than this in one range query."""


class SeriesFileError(SeriesError):
    """A recorded series that cannot be read; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Step:
    """One evaluation: its time, the sample's value and the state after it."""

    at: float
    value: float | None
    state: RuleState
    transitions: tuple[Transition, ...]


@dataclass(frozen=True, slots=True)
class Replay:
    """A rule's run over a series: every step, and the states as they ended."""

    rule: Rule
    steps: tuple[Step, ...]
    baseline: float | None
    final: EvalState | None

    def transitions(self) -> list[Transition]:
        return [t for step in self.steps for t in step.transitions]

    def fired_at(self) -> list[float]:
        """Every time the rule entered firing."""
        return [t.at for t in self.transitions() if t.fired]

    def state_at(self, at: float) -> RuleState:
        """The state after the last evaluation at or before ``at`` (no_data before the first)."""
        current = RuleState.NO_DATA
        for step in self.steps:
            if step.at > at + 1e-9:
                break
            current = step.state
        return current


def replay_rule(rule: Rule, samples: Sequence[Sample], deploy_at: float) -> Replay:
    """Evaluate ``rule`` at each sample from ``deploy_at`` on; earlier samples make the baseline.

    Samples must be in time order; each is evaluated at its own time. A sequential
    rule learns from the samples' counts before the deploy, and its steps' value is
    the evidence (natural log) after each poll.
    """
    baseline = None
    if rule.baseline_before is not None:
        baseline = baseline_mean(samples, deploy_at, rule.baseline_before)
    state: EvalState | None = None
    steps: list[Step] = []
    for sample in samples:
        if sample.time < deploy_at:
            continue
        if state is None:
            state = learned(rule, deploy_at, samples)
            if state is None:
                state = start(rule, deploy_at, baseline)
            else:
                baseline = state.baseline
        state, transitions = evaluate(rule, state, sample, sample.time)
        value = state.value if rule.sequential is not None or rule.latency is not None else sample.value
        steps.append(Step(sample.time, value, state.state, transitions))
    return Replay(rule, tuple(steps), baseline, state)


def learned(rule: Rule, deploy_at: float, samples: Sequence[Sample]) -> EvalState | None:
    """The state a sequential or latency rule starts a deploy at ``deploy_at`` in, learned from the
    samples before it (its ``baseline`` None: it could not learn); None for the other rules."""
    if rule.sequential is not None:
        return start_sequential(rule, deploy_at, samples)
    if rule.latency is not None:
        return start_latency(rule, deploy_at, samples)
    return None


def bucket_samples(
    counters: Sequence[tuple[float, Sequence[float | None]]], times: Sequence[float]
) -> list[Sample]:
    """Samples carrying a histogram's requests per bucket counted between consecutive points of
    its cumulative ``le`` counters (``(le, points)``, ``+Inf`` included), as a scrape counts them."""
    samples: list[Sample] = []
    previous: list[float] | None = None
    for i, at in enumerate(times):
        points = [c[1][i] if i < len(c[1]) else None for c in counters]
        if any(p is None for p in points):
            samples.append(Sample(at, None, "no point in the series"))
            previous = None
            continue
        now = [float(p) for p in points if p is not None]
        if previous is None:
            samples.append(Sample(at, None, "first point: counting starts at the next one"))
            previous = now
            continue
        grown = [v - b if v >= b else v for v, b in zip(now, previous, strict=True)]
        previous = now
        histogram = from_cumulative([(le, g) for (le, _), g in zip(counters, grown, strict=True)])
        if isinstance(histogram, str):
            samples.append(Sample(at, None, histogram, "bad_data"))
            continue
        requests = sum(histogram[1])
        samples.append(Sample(at, requests, None if requests > 0 else "no traffic", buckets=histogram))
    return samples


def counter_samples(
    errors: Sequence[float | None], total: Sequence[float | None], times: Sequence[float]
) -> list[Sample]:
    """Samples carrying (errors, requests) counted between consecutive points of two counters.

    As a scrape counts them: a counter that went down was reset and counts from
    zero; the first point, or one after a missing point of either, has no count yet.
    """
    samples: list[Sample] = []
    previous: tuple[float, float] | None = None
    for at, bad, all_ in zip(times, errors, total, strict=True):
        if bad is None or all_ is None:
            samples.append(Sample(at, None, "no point in the series"))
            previous = None
            continue
        if previous is None:
            samples.append(Sample(at, None, "first point: counting starts at the next one"))
            previous = (bad, all_)
            continue
        grown_bad = bad - previous[0] if bad >= previous[0] else bad
        grown_all = all_ - previous[1] if all_ >= previous[1] else all_
        previous = (bad, all_)
        if grown_bad > grown_all:
            samples.append(Sample(at, None, f"{grown_bad:g} errors counted in {grown_all:g} requests"))
        elif grown_all <= 0:
            samples.append(Sample(at, None, "no traffic", counts=(grown_bad, 0.0)))
        else:
            samples.append(Sample(at, grown_bad / grown_all, counts=(grown_bad, grown_all)))
    return samples


def on_ticks(
    points: Iterable[tuple[float, float | None]], first: float, last: float, step: float
) -> list[Sample]:
    """One sample per tick from ``first`` to ``last``: the newest point within the step before it.

    This is how the daemon sees a source polled every ``step``: a tick with no
    point in ``(tick - step, tick]`` has no data.
    """
    ordered = sorted(points, key=lambda p: p[0])
    samples: list[Sample] = []
    index = 0
    count = math.floor((last - first) / step + 1e-9) + 1
    latest: tuple[float, float | None] | None = None
    for n in range(count):
        tick = first + n * step
        while index < len(ordered) and ordered[index][0] <= tick + 1e-9:
            latest = ordered[index]
            index += 1
        if latest is not None and latest[0] > tick - step + 1e-9:
            value = latest[1]
            if value is None or math.isnan(value):
                samples.append(Sample(tick, None, "no value in the series"))
            else:
                samples.append(Sample(tick, value))
        else:
            samples.append(Sample(tick, None, "no point in the series"))
    return samples


# --- reading recorded series ---------------------------------------------------------------


def read_series_file(path: str | Path) -> list[tuple[float, float | None]]:
    """Points from a CSV (``timestamp,value``) or JSON file; SeriesFileError says what is wrong.

    Timestamps are Unix seconds or RFC 3339; an empty value, ``NaN`` or JSON
    null is a missing point. JSON is a list of ``[t, v]`` pairs, a list of
    ``{"timestamp": t, "value": v}`` objects, or a Prometheus range-query answer.
    """
    text = read_text(path)
    if Path(path).suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        return _json_points(text, str(path))
    name = str(path)
    points = [(at, _value(row[1], f"{name}:{n}")) for n, at, row in csv_rows(text, name, "timestamp,value")]
    if not points:
        raise SeriesFileError(f"{name}: no points in the file")
    return points


def read_text(path: str | Path) -> str:
    """A series file's text; SeriesFileError when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SeriesFileError(f"{path}: cannot read: {reason}") from None


def csv_rows(text: str, name: str, header: str) -> Iterator[tuple[int, float, list[str]]]:
    """A CSV series' rows as (line number, time, cells), ``header`` naming the columns: blank lines
    and ``#`` comments skipped, a first line without a time taken for a header."""
    columns = header.count(",") + 1
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != columns:
            raise SeriesFileError(f"{name}:{number}: expected '{header}', got {len(row)} columns")
        try:
            at = parse_time(row[0])
        except ValueError as exc:
            if number == 1:
                continue  # a header line
            raise SeriesFileError(f"{name}:{number}: {exc}") from None
        yield number, at, row


def _json_points(text: str, name: str) -> list[tuple[float, float | None]]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SeriesFileError(f"{name}: not JSON: {exc}") from None
    if isinstance(doc, dict):
        return matrix_points(doc, name, "max")
    if not isinstance(doc, list):
        raise SeriesFileError(f"{name}: expected a list of points")
    points: list[tuple[float, float | None]] = []
    for index, item in enumerate(doc):
        where = f"{name}: point {index}"
        if isinstance(item, dict):
            raw_at, raw_value = item.get("timestamp"), item.get("value")
        elif isinstance(item, list) and len(item) == 2:
            raw_at, raw_value = item
        else:
            raise SeriesFileError(f"{where}: expected [timestamp, value] or {{timestamp, value}}")
        try:
            at = parse_time(raw_at)
        except ValueError as exc:
            raise SeriesFileError(f"{where}: {exc}") from None
        points.append((at, _value(raw_value, where)))
    if not points:
        raise SeriesFileError(f"{name}: no points in the file")
    return points


Series = list[tuple[dict[str, str], list[tuple[float, float | None]]]]
"""A range query's series: each one's labels and points."""


def matrix_points(doc: Any, name: str, aggregation: str) -> list[tuple[float, float | None]]:
    """Points from a Prometheus range-query answer; several series reduce by ``aggregation``."""
    series = matrix_series(doc, name)
    if len(series) > 1 and aggregation == "single":
        raise SeriesFileError(f"{name}: {len(series)} series where one was expected")
    by_time: dict[float, list[float]] = {}
    for _, points in series:
        for at, value in points:
            if value is not None:
                by_time.setdefault(at, []).append(value)
    return [(at, _reduce(values, aggregation)) for at, values in sorted(by_time.items())]


def matrix_series(doc: Any, name: str) -> Series:
    """Each series of a Prometheus range-query answer with its labels (missing values None)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or doc.get("status") != "success":
        error = doc.get("error", "no data in the answer") if isinstance(doc, dict) else "not an object"
        raise SeriesFileError(f"{name}: not a successful range-query answer: {str(error)[:300]}")
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise SeriesFileError(f"{name}: expected a matrix result, got {data.get('resultType')!r}")
    found: Series = []
    for series in data["result"]:
        values = series.get("values") if isinstance(series, dict) else None
        if not isinstance(values, list):
            raise SeriesFileError(f"{name}: a series has no values")
        points: list[tuple[float, float | None]] = []
        for pair in values:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise SeriesFileError(f"{name}: malformed point {str(pair)[:60]}")
            points.append((float(pair[0]), _value(pair[1], name)))
        labels = series.get("metric")
        labels = labels if isinstance(labels, dict) else {}
        found.append(({str(k): str(v) for k, v in labels.items()}, points))
    return found


def _reduce(values: list[float], aggregation: str) -> float:
    if aggregation == "min":
        return min(values)
    if aggregation == "sum":
        return math.fsum(values)
    if aggregation == "avg":
        return math.fsum(values) / len(values)
    return max(values)


def _value(raw: Any, where: str) -> float | None:
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "_")):
        return None
    if isinstance(raw, bool):
        raise SeriesFileError(f"{where}: value {raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SeriesFileError(f"{where}: value {str(raw)[:40]!r} is not a number") from None
    return None if math.isnan(value) else value


def parse_time(raw: Any) -> float:
    """Unix seconds (a number) or an RFC 3339 time, as Unix seconds."""
    if isinstance(raw, bool):
        raise ValueError(f"timestamp {raw!r} is neither Unix seconds nor RFC 3339")
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        text = str(raw).strip()
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"timestamp '{text[:40]}' is neither Unix seconds nor RFC 3339") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            value = moment.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp {raw!r} is not finite")
    return value


def query_range(
    url: str, query: str, start_at: float, end_at: float, step: float, aggregation: str, timeout: float = 30.0
) -> list[tuple[float, float | None]]:
    """A range query against a Prometheus server, as points; SeriesFileError when it fails."""
    return matrix_points(*_range_answer(url, query, start_at, end_at, step, timeout), aggregation)


def query_range_series(
    url: str, query: str, start_at: float, end_at: float, step: float, timeout: float = 30.0
) -> Series:
    """A range query against a Prometheus server, series by series; SeriesFileError when it fails."""
    return matrix_series(*_range_answer(url, query, start_at, end_at, step, timeout))


def _range_answer(
    url: str, query: str, start_at: float, end_at: float, step: float, timeout: float
) -> tuple[Any, str]:
    """The decoded answer of a range query and the endpoint that gave it."""
    if end_at <= start_at:
        raise SeriesFileError("--end must be after --start")
    if (end_at - start_at) / step > MAX_RANGE_POINTS:
        raise SeriesFileError(
            f"{format_duration(end_at - start_at)} at a step of {format_duration(step)} is more than "
            f"{MAX_RANGE_POINTS} points: use a larger --step"
        )
    params = urllib.parse.urlencode({"query": query, "start": start_at, "end": end_at, "step": step})
    endpoint = url.rstrip("/") + "/api/v1/query_range"
    request = urllib.request.Request(
        endpoint,
        data=params.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(64 << 20)
    except urllib.error.HTTPError as exc:
        body = exc.read(1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SeriesFileError(f"{endpoint}: {reason}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise SeriesFileError(f"{endpoint}: the answer is not JSON") from None
    return doc, endpoint


# --- finding a rule in a config ----------------------------------------------------------


def find_rule(config: Config, name: str) -> tuple[str, ServiceConfig, RuleConfig]:
    """The rule called ``name`` (or ``service/name``); WatchdogError when none or several."""
    wanted_service, _, wanted = name.rpartition("/")
    found = [
        (service_name, service, rule)
        for service_name, service in config.services.items()
        for rule in service.rules
        if rule.name == wanted and (not wanted_service or wanted_service == service_name)
    ]
    if not found:
        known = sorted(f"{s}/{r.name}" for s, svc in config.services.items() for r in svc.rules)
        raise WatchdogError(f"no rule '{name}' in the config (rules: {', '.join(known) or 'none'})")
    if len(found) > 1:
        where = ", ".join(f"{s}/{name}" for s, _, _ in found)
        raise WatchdogError(f"rule '{name}' is in several services; name one of: {where}")
    return found[0]


def interval_of(config: Config, service: ServiceConfig) -> float:
    return service.interval if service.interval is not None else config.defaults.interval


def grace_of(config: Config, service_name: str, rule: RuleConfig) -> float:
    """How long after it fires the rule's proposal would execute unless vetoed (0: at once)."""
    return proposal(policy_for(config, service_name), 0.0, rule.immediate).execute_at or 0.0


# --- printing --------------------------------------------------------------------------------


def describe_replay(replay: Replay, grace: float, clock: bool) -> list[str]:
    """Each state change, when a rollback would have been proposed, and the count."""
    rule = replay.rule
    lines: list[str] = []
    if rule.baseline_before is not None:
        before = format_duration(rule.baseline_before)
        if replay.baseline is None:
            lines.append(f"baseline: none (no data in the {before} before the deploy)")
        else:
            lines.append(f"baseline: {replay.baseline:g} (mean of the {before} before the deploy)")
    if not replay.steps:
        lines.append("no evaluations: the series has no point after the start")
        return lines
    first = replay.steps[0].at
    rollbacks = 0
    for transition in replay.transitions():
        when = _when(transition.at, first, clock)
        lines.append(f"{when}  {transition.from_state} -> {transition.to_state}: {transition.reason}")
        if transition.fired:
            if rule.action == "rollback":
                rollbacks += 1
                executes = _when(transition.at + grace, first, clock)
                lines.append(
                    f"{when}  would propose a rollback (executes at {executes} unless vetoed, "
                    f"grace {format_duration(grace)})"
                )
            else:
                lines.append(f"{when}  would notify (action: notify)")
    span = replay.steps[-1].at - first
    fired = len(replay.fired_at())
    what = "rollbacks" if rule.action == "rollback" else "notifications"
    count = rollbacks if rule.action == "rollback" else fired
    summary = f"{len(replay.steps)} evaluations over {format_duration(span)}: {count} would-be {what}"
    if count and span > 0:
        summary += f" (one per {format_duration(span / count)})"
    lines.append(summary)
    return lines


def _when(at: float, first: float, clock: bool) -> str:
    if clock:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "+" + format_duration(at - first) if at > first else "+0s"
