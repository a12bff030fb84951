"""Checks across the config: each rule fits its source, each service its steps.

Every check returns problems as ``(location, message)``; the loader turns the
location into a file line. All problems are collected, none stops the others.
"""

from __future__ import annotations

from watchdogd.config.groups import check_groups
from watchdogd.config.models import (
    DOCKER_FIELDS,
    EXEC_FIELDS,
    HTTP_FIELDS,
    LOG_SOURCE_TYPES,
    POSTGRES_FIELDS,
    Config,
    RuleConfig,
    ServiceConfig,
    SourceConfig,
)
from watchdogd.config.types import format_duration
from watchdogd.selector import parse_matchers, parse_selector

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

# The fields that say what a rule measures, and which source types take each.
_MEASURES: dict[str, tuple[str, ...]] = {
    "query": ("prometheus", "postgres"),
    "metric": ("scrape",),
    "rate": ("scrape",),
    "ratio": ("scrape",),
    "quantile": ("scrape",),
    "sequential": ("scrape", "prometheus"),
    "latency": ("scrape", "prometheus"),
    "field": ("docker", "http", "postgres", "exec"),
    "alerts": ("alertmanager",),
    "pattern": LOG_SOURCE_TYPES,
    "over": LOG_SOURCE_TYPES,
    "absent_for": LOG_SOURCE_TYPES,
}
_WHAT_FITS: dict[str, str] = {
    "prometheus": "a query (PromQL), sequential or latency",
    "scrape": "exactly one of metric, rate, ratio, quantile, sequential, latency",
    "http": "an optional field (up, status, latency_seconds)",
    "docker": "a field (" + ", ".join(DOCKER_FIELDS) + ")",
    "docker_logs": "a pattern with over or absent_for",
    "file": "a pattern with over or absent_for",
    "postgres": "a query (SQL returning one number) or field: connected",
    "redis": "nothing more: the value is the queue depth",
    "exec": "a field (" + ", ".join(EXEC_FIELDS) + ")",
    "alertmanager": "alerts: label matchers, like 'alertname=\"HighErrorRate\"'",
}


def check_config(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    intervals = poll_intervals(config)
    for name, service in config.services.items():
        problems += _check_service(config, name, service, intervals)
    return problems + check_groups(config)


def _check_service(
    config: Config, name: str, service: ServiceConfig, intervals: dict[str, float]
) -> list[Problem]:
    base: Loc = ("services", name)
    problems: list[Problem] = []
    if service.health is not None:
        source = config.sources.get(service.health)
        if source is None:
            problems.append(((*base, "health"), _unknown_source(service.health, config)))
        elif source.type != "http":
            problems.append(
                (
                    (*base, "health"),
                    f"'{service.health}' is a {source.type} source; health needs an http source",
                )
            )
    steps = service.rollback.steps
    step_loc: Loc = (*base, "rollback", "steps")
    written = "steps" in service.rollback.model_fields_set
    seen: set[str] = set()
    for index, step in enumerate(steps):
        if step in seen:
            problems.append(((*step_loc, index), f"step '{step}' is listed twice"))
        seen.add(step)
    needs = {
        "container": (
            service.container is not None or service.compose is not None or service.swarm_service is not None,
            "a container step needs the service's container, compose service or swarm_service",
        ),
        "sql": (service.database is not None, "a sql step needs the service's database"),
        "restore": (service.database is not None, "a restore step needs the service's database"),
        "redis_purge": (
            service.rollback.redis_purge is not None,
            "a redis_purge step needs rollback.redis_purge with its keys",
        ),
        "webhook": (
            service.rollback.webhook is not None,
            "a webhook step needs rollback.webhook with its url",
        ),
    }
    for name in service.rollback.commands:
        needs[f"command:{name}"] = (True, "")
    for index, step in enumerate(steps if written else ()):
        ok, message = needs.get(step, (not step.startswith("command:"), ""))
        if step.startswith("command:") and not ok:
            message = f"no command '{step.removeprefix('command:')}' in rollback.commands"
        if not ok:
            problems.append(((*step_loc, index), message))
    rollback_rules = [i for i, rule in enumerate(service.rules) if rule.action == "rollback"]
    plan = service.plan()
    # written as [verify] is the author's choice (a dry rehearsal of the decisions); left out, it is a mistake
    if rollback_rules and (not plan or (not written and plan == ("verify",))):
        problems.append(
            (
                (*base, "rules", rollback_rules[0], "action"),
                "a rollback rule with nothing to roll back: give the service a container, a database,"
                " rollback.redis_purge or rollback.webhook, or write rollback.steps",
            )
        )
    names: set[str] = set()
    for index, rule in enumerate(service.rules):
        loc: Loc = (*base, "rules", index)
        if rule.name in names:
            problems.append(((*loc, "name"), f"rule '{rule.name}' is defined twice in this service"))
        names.add(rule.name)
        problems += check_rule(config, rule, loc)
        problems += _check_window(config, rule, loc, intervals)
    return problems


def poll_intervals(config: Config) -> dict[str, float]:
    """How often each source a rule reads is polled: its own interval, or the shortest of the
    services reading it (one pass over the rules: a fleet's config has thousands)."""
    shortest: dict[str, float] = {}
    for svc in config.services.values():
        interval = svc.interval or config.defaults.interval
        for rc in svc.rules:
            shortest[rc.source] = min(interval, shortest.get(rc.source, interval))
    intervals: dict[str, float] = {}
    for name, interval in shortest.items():
        own = config.sources[name].interval if name in config.sources else None
        intervals[name] = own or interval
    return intervals


def _check_window(config: Config, rule: RuleConfig, loc: Loc, intervals: dict[str, float]) -> list[Problem]:
    """A window that can never hold two polls of its source gives no value, ever: a blind rule."""
    source = config.sources.get(rule.source)
    if source is None or source.type != "scrape":
        return []
    for kind in ("rate", "ratio", "quantile"):
        spec = getattr(rule, kind)
        if spec is None:
            continue
        interval = intervals[rule.source]
        if spec.over < 2 * interval:
            return [
                (
                    (*loc, kind, "over"),
                    f"a {format_duration(spec.over)} window never holds two polls of '{rule.source}'"
                    f" (every {format_duration(interval)}): the rule could never see; make it at least"
                    f" {format_duration(2 * interval)}, or poll more often",
                )
            ]
    return []


def check_rule(config: Config, rule: RuleConfig, loc: Loc) -> list[Problem]:
    source = config.sources.get(rule.source)
    if source is None:
        return [((*loc, "source"), _unknown_source(rule.source, config))]
    problems = _check_measure(rule, source, loc)
    problems += _check_timing(rule, source, loc)
    return problems


def _check_measure(rule: RuleConfig, source: SourceConfig, loc: Loc) -> list[Problem]:
    kind = source.type
    problems: list[Problem] = []
    present = [key for key in _MEASURES if getattr(rule, key) is not None]
    for key in present:
        if kind not in _MEASURES[key]:
            problems.append(
                (
                    (*loc, key),
                    f"'{key}' does not apply to a {kind} source; it takes {_WHAT_FITS[kind]}",
                )
            )
    if problems:
        return problems
    if kind == "prometheus" and rule.sequential is not None:
        if rule.query is not None:
            problems.append(((*loc, "query"), "a sequential rule takes its counters, not a query"))
        for key in ("errors", "total"):
            problem = promql_problem(getattr(rule.sequential, key))
            if problem is not None:
                problems.append(((*loc, "sequential", key), f"PromQL that does not parse: {problem}"))
    elif kind == "prometheus" and rule.latency is not None:
        if rule.query is not None:
            problems.append(((*loc, "query"), "a latency rule takes its histogram, not a query"))
        try:
            parse_selector(rule.latency.histogram)
        except ValueError as exc:
            problems.append(((*loc, "latency", "histogram"), str(exc)))
    elif kind == "prometheus" and rule.query is None:
        problems.append(((*loc,), f"a rule on prometheus source '{rule.source}' needs a query"))
    elif kind == "prometheus" and rule.query is not None:
        problem = promql_problem(rule.query)
        if problem is not None:
            problems.append(((*loc, "query"), f"PromQL that does not parse: {problem}"))
    elif kind == "scrape":
        chosen = [
            key for key in ("metric", "rate", "ratio", "quantile", "sequential", "latency") if key in present
        ]
        if len(chosen) != 1:
            where = (*loc, chosen[1]) if len(chosen) > 1 else loc
            problems.append((where, f"a rule on scrape source '{rule.source}' needs {_WHAT_FITS[kind]}"))
        problems += _check_selectors(rule, loc)
    elif kind == "docker":
        if rule.field is None:
            problems.append(((*loc,), f"a rule on docker source '{rule.source}' needs {_WHAT_FITS[kind]}"))
        elif rule.field not in DOCKER_FIELDS:
            problems.append(((*loc, "field"), _unknown_field(rule.field, DOCKER_FIELDS)))
    elif kind == "http":
        if rule.field is not None and rule.field not in HTTP_FIELDS:
            problems.append(((*loc, "field"), _unknown_field(rule.field, HTTP_FIELDS)))
    elif kind == "postgres":
        if (rule.query is None) == (rule.field is None):
            problems.append(((*loc,), f"a rule on postgres source '{rule.source}' needs {_WHAT_FITS[kind]}"))
        elif rule.field is not None and rule.field not in POSTGRES_FIELDS:
            problems.append(((*loc, "field"), _unknown_field(rule.field, POSTGRES_FIELDS)))
    elif kind == "exec":
        if rule.field is None:
            problems.append(((*loc,), f"a rule on exec source '{rule.source}' needs {_WHAT_FITS[kind]}"))
        elif rule.field not in EXEC_FIELDS:
            problems.append(((*loc, "field"), _unknown_field(rule.field, EXEC_FIELDS)))
        elif rule.field == "failed_tests" and getattr(source, "report", None) is None:
            problems.append(
                ((*loc, "field"), f"failed_tests needs a JUnit report: set report on source '{rule.source}'")
            )
    elif kind == "alertmanager":
        if rule.alerts is None:
            problems.append(
                ((*loc,), f"a rule on alertmanager source '{rule.source}' needs {_WHAT_FITS[kind]}")
            )
        else:
            try:
                parse_matchers(rule.alerts)
            except ValueError as exc:
                problems.append(((*loc, "alerts"), str(exc)))
    elif kind in LOG_SOURCE_TYPES:
        if rule.pattern is None:
            problems.append(((*loc,), f"a rule on {kind} source '{rule.source}' needs a pattern"))
        if (rule.over is None) == (rule.absent_for is None):
            problems.append(
                (
                    (*loc, "absent_for") if rule.absent_for is not None else loc,
                    "a log rule needs exactly one of over (count matches) "
                    "or absent_for (no match for so long)",
                )
            )
    return problems


def _check_selectors(rule: RuleConfig, loc: Loc) -> list[Problem]:
    texts: list[tuple[Loc, str]] = []
    if rule.metric is not None:
        texts.append(((*loc, "metric"), rule.metric))
    if rule.rate is not None:
        texts.append(((*loc, "rate", "metric"), rule.rate.metric))
    if rule.ratio is not None:
        texts.append(((*loc, "ratio", "numerator"), rule.ratio.numerator))
        texts.append(((*loc, "ratio", "denominator"), rule.ratio.denominator))
    if rule.quantile is not None:
        texts.append(((*loc, "quantile", "metric"), rule.quantile.metric))
    if rule.sequential is not None:
        texts.append(((*loc, "sequential", "errors"), rule.sequential.errors))
        texts.append(((*loc, "sequential", "total"), rule.sequential.total))
    if rule.latency is not None:
        texts.append(((*loc, "latency", "histogram"), rule.latency.histogram))
    problems: list[Problem] = []
    for where, text in texts:
        try:
            parse_selector(text)
        except ValueError as exc:
            problems.append((where, str(exc)))
    return problems


def _check_sequential(rule: RuleConfig, loc: Loc, kind: str = "sequential") -> list[Problem]:
    """A sequential (or latency) rule fires on its evidence: no condition, timers or baseline of its own."""
    problems: list[Problem] = []
    for key in ("condition", "clear_condition", "failures", "baseline"):
        if getattr(rule, key) is not None:
            problems.append(
                ((*loc, key), f"a {kind} rule has no {key}: it fires when the evidence reaches its bound")
            )
    if rule.for_ or rule.immediate or rule.keep_firing_for:
        problems.append(((*loc,), f"a {kind} rule takes no for, immediate or keep_firing_for"))
    return problems


def _check_timing(rule: RuleConfig, source: SourceConfig, loc: Loc) -> list[Problem]:
    problems: list[Problem] = []
    absence = rule.absent_for is not None
    if rule.sequential is not None:
        return _check_sequential(rule, loc)
    if rule.latency is not None:
        return _check_sequential(rule, loc, "latency")
    if absence:
        if rule.condition is not None:
            problems.append(((*loc, "condition"), "an absent_for rule has no condition: it fires on silence"))
        if rule.baseline is not None:
            problems.append(((*loc, "baseline"), "an absent_for rule cannot have a baseline"))
    elif rule.condition is None:
        problems.append(((*loc,), 'a rule needs a condition, like "> 0.05"'))
    elif rule.baseline is not None:
        if rule.condition.threshold is not None:
            problems.append(
                (
                    (*loc, "condition"),
                    f'with a baseline the condition is only an operator ("{rule.condition.op}"); '
                    "the threshold is the baseline widened by the tolerance",
                )
            )
        elif rule.condition.op in ("==", "!="):
            problems.append(((*loc, "condition"), "a baseline compares with >, >=, < or <="))
        elif rule.baseline.min is not None and rule.condition.op in ("<", "<="):
            problems.append(
                (
                    (*loc, "baseline", "min"),
                    "a floor applies to rules that fire above the baseline (> or >=), "
                    f"not '{rule.condition.op}'",
                )
            )
    elif rule.condition.threshold is None:
        problems.append(((*loc, "condition"), f"'{rule.condition.op}' needs a number to compare with"))
    if rule.clear_condition is not None and rule.clear_condition.threshold is None:
        problems.append(((*loc, "clear_condition"), "a clear condition needs a number to compare with"))
    if rule.failures is not None:
        if rule.for_ > 0:
            problems.append(((*loc, "failures"), "use either for or failures, not both"))
        of = rule.failures.of
        if of is not None and of < rule.failures.count:
            problems.append(
                (
                    (*loc, "failures", "of"),
                    f"{rule.failures.count} failures cannot happen in {of} evaluations",
                )
            )
    if rule.immediate and (rule.for_ > 0 or rule.failures is not None):
        problems.append(((*loc, "immediate"), "an immediate rule fires on one hit; drop for or failures"))
    if rule.baseline is not None and source.type in ("docker_logs", "file", "docker"):
        problems.append(((*loc, "baseline"), f"a baseline does not apply to a {source.type} source"))
    return problems


def _unknown_source(name: str, config: Config) -> str:
    known = ", ".join(sorted(config.sources)) or "none defined"
    return f"unknown source '{name}' (sources: {known})"


def _unknown_field(name: str, allowed: tuple[str, ...]) -> str:
    return f"unknown field '{name}' (one of: {', '.join(allowed)})"


def promql_problem(query: str) -> str | None:
    """Why ``query`` is not PromQL (Prometheus's own grammar, through ``promql-parser``); None if it is.

    Imported here, not at the top: only a config with prometheus rules pays for the parser.
    """
    import promql_parser

    try:
        promql_parser.parse(query)
    except ValueError as exc:
        return str(exc) or "invalid query"
    return None
