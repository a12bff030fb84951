"""The config in plain words, as ``watchdogd check`` prints it."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from watchdogd.config.models import Config, ExecSource, RuleConfig, ServiceConfig, SourceConfig
from watchdogd.config.types import format_duration as fd


def describe_config(config: Config) -> list[str]:
    d = config.defaults
    lines = [
        f"server: {config.server.listen}"
        + (f", tokens from {config.server.tokens_file}" if config.server.tokens_file else ", no tokens file"),
        f"state: {config.state.url}",
        f"defaults: poll every {fd(d.interval)}, watch {fd(d.window)} after a deploy, "
        f"veto window {fd(d.grace)}, mode {d.mode}",
    ]
    for hook in config.notify:
        fmt = getattr(hook, "format", None)
        lines.append(f"notify: {hook.label()}" + (f" ({fmt})" if fmt else ""))
    lines.append(f"sources ({len(config.sources)}):")
    for name, source in config.sources.items():
        lines.append(f"  {name}: {describe_source(source)}")
    lines.append(f"services ({len(config.services)}):")
    for name, service in config.services.items():
        lines += _describe_service(config, name, service)
    if any("restore" in svc.plan() for svc in config.services.values()):
        b = config.backups
        where = str(b.dir) if b.dir is not None else "backups/ beside the state file"
        age = f", those older than {fd(b.max_age)} pruned but the newest" if b.max_age is not None else ""
        lines.append(f"backups: pg_dump -Fc into {where}, newest {b.keep} per service kept{age}")
    if config.groups:
        lines.append(f"groups ({len(config.groups)}):")
        for name in config.groups:
            lines += describe_group(config, name)
    return lines


def _freeze_of(config: Config, service: str) -> float:
    own = config.services[service].freeze_after_rollback
    return own if own is not None else config.defaults.freeze_after_rollback


def describe_group(config: Config, name: str) -> list[str]:
    """A group: its members, the one decision they share, the order their plans run in, the freezes."""
    # here, not at the top: watchdogd.decisions imports the config package, which imports this module
    from watchdogd.decisions import group_policy, policy_for

    group = config.groups[name]
    known = [s for s in group.services if s in config.services]
    policy = group_policy([policy_for(config, s) for s in known])
    freezes = {_freeze_of(config, s) for s in known}
    if freezes == {0.0}:
        frozen = "no member frozen after it"
    elif len(freezes) == 1:
        frozen = f"then every member frozen for {fd(freezes.pop())}"
    else:
        frozen = "then every member frozen for its own freeze_after_rollback"
    return [
        f"  {name}: {', '.join(group.services)}",
        f"    rolled back as one: one proposal for any member's rule, one decision (mode {policy.mode}, "
        f"veto window {fd(policy.grace)}, the most careful member's)",
        f"    plans run in order {' -> '.join(group.sequence)}; a failure stops the rest; {frozen}",
    ]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe_source(source: SourceConfig) -> str:
    where_of: dict[str, Callable[[], str]] = {
        "prometheus": lambda: f"Prometheus API at {getattr(source, 'url', '')}",
        "scrape": lambda: f"scrapes {getattr(source, 'url', '')}" + _over_tasks(source),
        "http": lambda: f"probes {getattr(source, 'url', '')}",
        "docker": lambda: f"state and stats of container '{getattr(source, 'container', '')}'",
        "docker_logs": lambda: (
            f"log stream of every task of Swarm service '{getattr(source, 'swarm_service', '')}'"
            if getattr(source, "swarm_service", None)
            else f"log stream of container '{getattr(source, 'container', '')}'"
        ),
        "file": lambda: f"log file {getattr(source, 'path', '')}",
        "postgres": lambda: f"PostgreSQL at {getattr(source, 'dsn', '')}",
        "redis": lambda: f"Redis {getattr(source, 'url', '')} key {getattr(source, 'key', '')}",
        "exec": lambda: _describe_exec(source),
        "alertmanager": lambda: "alerts posted to /v1/alertmanager",
    }
    where = where_of[source.type]()
    every = f"every {fd(source.interval)}" if source.interval else "at the service's interval"
    if source.type in ("docker_logs", "file"):
        every = "followed live"
    if getattr(source, "after_deploy", False):
        every = f"once a deploy is watched, then {every}"
    return f"{source.type}, {where}, {every}, timeout {fd(source.timeout)}"


def _over_tasks(source: SourceConfig) -> str:
    """A scrape over a Swarm service's tasks says so ('' otherwise)."""
    swarm = getattr(source, "swarm_service", None)
    return f" on every task of Swarm service '{swarm}' (merged, a swarm_task label each)" if swarm else ""


def _target(service: ServiceConfig) -> str:
    if service.swarm_service is not None:
        return f"swarm service: {service.swarm_service}"
    if service.compose is not None:
        return f"compose service: {service.compose.project}/{service.compose.service}"
    return f"container: {service.container or '(none)'}"


def _describe_service(config: Config, name: str, service: ServiceConfig) -> list[str]:
    d = config.defaults
    interval = service.interval or d.interval
    window = service.window or d.window
    grace = d.grace if service.grace is None else service.grace
    mode = service.mode or d.mode
    lines = [f"  {name}:"]
    lines.append(f"    {_target(service)}; health probe: {service.health or '(none)'}")
    if service.database is not None:
        lines.append(f"    database: {service.database.dsn}")
    lines.append(
        f"    watched for {fd(window)} after a deploy, evaluated every {fd(interval)}, "
        f"veto window {fd(grace)}, mode {mode}"
    )
    lines.append(f"    rollback: {' -> '.join(service.plan()) or '(no steps)'}")
    if "restore" in service.plan():
        restore = service.rollback.restore
        lines.append(
            "    restore: the backup the deployment names (none: skipped), "
            + ("after an operator's approval" if restore.approve else "without waiting for approval")
            + f", within {fd(restore.timeout)}; the replaced database "
            + ("kept" if restore.keep_replaced else "dropped")
        )
    group = config.group_of(name)
    if group is not None:
        order = config.groups[group].sequence
        others = ", ".join(s for s in config.groups[group].services if s != name)
        place = f"{_ordinal(order.index(name) + 1)} of {len(order)}" if name in order else "not in its order"
        lines.append(f"    group: {group} (rolled back with {others}; {place})")
    for rule in service.rules:
        lines += describe_rule(rule)
    return lines


def describe_rule(rule: RuleConfig) -> list[str]:
    action = "rolls back" if rule.action == "rollback" else "notifies"
    return [
        f"    rule {rule.name} [{rule.severity}, {rule.action}]",
        f"      watches: {describe_measure(rule)}",
        f"      {action} when {describe_trigger(rule)}",
        f"      missing data: {describe_missing(rule)}",
    ]


def describe_measure(rule: RuleConfig) -> str:
    on = f"on {rule.source}"
    if rule.query is not None:
        return f"query `{rule.query}` {on}"
    if rule.rate is not None:
        return f"per-second rate of {rule.rate.metric} over {fd(rule.rate.over)} {on}"
    if rule.ratio is not None:
        r = rule.ratio
        return f"rate of {r.numerator} / rate of {r.denominator} over {fd(r.over)} {on}"
    if rule.quantile is not None:
        q = rule.quantile
        return f"P{q.q * 100:g} of histogram {q.metric} over {fd(q.over)} {on}"
    if rule.sequential is not None:
        return f"errors {rule.sequential.errors} over requests {rule.sequential.total}, counted per poll {on}"
    if rule.latency is not None:
        lat = rule.latency
        return f"P{lat.quantile * 100:g} of histogram {lat.histogram} since the deploy, per poll {on}"
    if rule.metric is not None:
        return f"{rule.metric} (summed over matching series) {on}"
    if rule.pattern is not None:
        if rule.absent_for is not None:
            return f"log lines matching /{rule.pattern}/ {on}"
        return f"log lines matching /{rule.pattern}/ per {fd(rule.over or 0)} {on}"
    if rule.field is not None:
        return f"{rule.field} {on}"
    if rule.alerts is not None:
        return f"alerts firing that match {{{rule.alerts.strip().strip('{}')}}} {on}"
    return f"the value {on}"


def describe_trigger(rule: RuleConfig) -> str:
    if rule.absent_for is not None:
        return f"no line has matched for {fd(rule.absent_for)} after the deploy"
    if rule.sequential is not None:
        seq = rule.sequential
        return (
            f"the evidence says the error rate is {seq.bad * 100:g}% or worse rather than healthy"
            f" (false rollback at most {seq.false_rollback * 100:g}% over the window)"
        )
    if rule.latency is not None:
        lat = rule.latency
        return (
            f"it is at least {lat.slower_by * 100:g}% above the one of the {fd(lat.history)} before"
            f" the deploy, with confidence {lat.confidence * 100:g}%"
        )
    condition = rule.condition
    if condition is None:
        return "never (no condition)"
    if rule.baseline is not None:
        b = rule.baseline
        direction = "above" if condition.op in (">", ">=") else "below"
        what = (
            f"the value is more than {b.tolerance * 100:g}% {direction} "
            f"the pre-deploy mean of the {fd(b.before)} before the deploy"
        )
        if b.min is not None:
            what += f" and above the floor {b.min:g}"
    else:
        what = f"the value is {condition.describe()}"
    if rule.immediate:
        text = f"{what}, at once (one hit is enough, no veto window)"
    elif rule.failures is not None:
        f = rule.failures
        span = f"of the last {f.of} evaluations" if f.of else "evaluations within the window"
        text = f"{what} in {f.count} {span}"
    elif rule.for_ > 0:
        text = f"{what} at every evaluation for {fd(rule.for_)}"
    else:
        text = f"{what} at one evaluation"
    if rule.clear_condition is not None:
        text += f"; clears only once {rule.clear_condition.describe()}"
    if rule.keep_firing_for > 0:
        text += f"; keeps firing {fd(rule.keep_firing_for)} after it clears"
    return text


def describe_missing(rule: RuleConfig) -> str:
    m = rule.on_missing
    if m.result == "hold":
        return "hold the last state (missing data never fires the rule)"
    after = f"after {fd(m.after)} without data" if m.after else "as soon as data is missing"
    verb = "counts as a failing evaluation" if m.result == "fail" else "counts as a passing evaluation"
    return f"{verb} {after}"


def _describe_exec(source: SourceConfig) -> str:
    if not isinstance(source, ExecSource):
        return ""
    text = source.command if isinstance(source.command, str) else shlex.join(source.command)
    parts = [f"runs `{text}`" + (" in a shell" if source.shell else ""), f"in {source.cwd or '.'}"]
    if source.env_file is not None:
        parts.append(f"with env_file {source.env_file}")
    if source.report is not None:
        parts.append(f"JUnit report {source.report}")
    return ", ".join(parts)
