"""docs/config.md: the config reference, every key, generated from the models.

``watchdogd schema --markdown > docs/config.md`` rewrites it; a test fails
when the file and the models disagree.
"""

from __future__ import annotations

from typing import Any

from watchdogd.config.schema import config_json_schema
from watchdogd.config.types import format_duration

INTRO = """# Config reference

Every key watchdogd's config accepts, generated from its models (the same
ones that load and check a config). A key that is not here is an error.
Durations are `500ms`, `15s`, `5m`, `2h` (or combined, `1h30m`); conditions
are an operator and a number, like `"> 0.05"`. `watchdogd check --config PATH`
prints a config as watchdogd understands it; `config/watchdogd.schema.json` is
the JSON Schema of the same models, for editors.

Sections, from the top of a file: `server`, `state`, `defaults`, `logging`,
`notify` (a list), `sources` (by name, each with a `type`), `services` (by
name, each with its `rollback` and `rules`).
"""

ORDER = (
    "Config",
    "ServerConfig",
    "TlsConfig",
    "StateConfig",
    "DefaultsConfig",
    "LoggingConfig",
    "WebhookNotify",
    "SlackNotify",
    "TeamsNotify",
    "PagerDutyNotify",
    "OpsgenieNotify",
    "PrometheusSource",
    "BasicAuth",
    "ScrapeSource",
    "HttpSource",
    "DockerSource",
    "DockerLogsSource",
    "FileSource",
    "PostgresSource",
    "RedisSource",
    "ExecSource",
    "AlertmanagerSource",
    "ServiceConfig",
    "DatabaseConfig",
    "MigrationsTable",
    "RollbackConfig",
    "ContainerStepConfig",
    "RedisPurgeConfig",
    "CommandStepConfig",
    "WebhookStepConfig",
    "VerifyStepConfig",
    "RuleConfig",
    "RateSpec",
    "RatioSpec",
    "QuantileSpec",
    "FailuresSpec",
    "BaselineSpec",
    "OnMissingSpec",
)

TITLES = {
    "Config": "The file",
    "ServerConfig": "server",
    "TlsConfig": "server.tls",
    "StateConfig": "state",
    "DefaultsConfig": "defaults",
    "LoggingConfig": "logging",
    "WebhookNotify": "notify[], type: webhook",
    "SlackNotify": "notify[], type: slack",
    "TeamsNotify": "notify[], type: teams",
    "PagerDutyNotify": "notify[], type: pagerduty",
    "OpsgenieNotify": "notify[], type: opsgenie",
    "PrometheusSource": "sources.NAME, type: prometheus",
    "BasicAuth": "basic_auth (prometheus)",
    "ScrapeSource": "sources.NAME, type: scrape",
    "HttpSource": "sources.NAME, type: http",
    "DockerSource": "sources.NAME, type: docker",
    "DockerLogsSource": "sources.NAME, type: docker_logs",
    "FileSource": "sources.NAME, type: file",
    "PostgresSource": "sources.NAME, type: postgres",
    "RedisSource": "sources.NAME, type: redis",
    "ExecSource": "sources.NAME, type: exec",
    "AlertmanagerSource": "sources.NAME, type: alertmanager",
    "ServiceConfig": "services.NAME",
    "DatabaseConfig": "services.NAME.database",
    "MigrationsTable": "services.NAME.database.migrations_table",
    "RollbackConfig": "services.NAME.rollback",
    "ContainerStepConfig": "services.NAME.rollback.container",
    "RedisPurgeConfig": "services.NAME.rollback.redis_purge",
    "QueuePurge": "services.NAME.rollback.redis_purge.queues[]",
    "RestoreStepConfig": "services.NAME.rollback.restore",
    "BackupsConfig": "backups",
    "CommandStepConfig": "services.NAME.rollback.commands.NAME",
    "WebhookStepConfig": "services.NAME.rollback.webhook",
    "VerifyStepConfig": "services.NAME.rollback.verify",
    "RuleConfig": "services.NAME.rules[]",
    "RateSpec": "rules[].rate",
    "RatioSpec": "rules[].ratio",
    "QuantileSpec": "rules[].quantile",
    "FailuresSpec": "rules[].failures",
    "BaselineSpec": "rules[].baseline",
    "OnMissingSpec": "rules[].on_missing",
}


def render_markdown() -> str:
    schema = config_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    models = {"Config": schema, **defs}
    names = [n for n in ORDER if n in models] + sorted(n for n in models if n not in ORDER)
    out = [INTRO]
    for name in names:
        model = models[name]
        out.append(f"\n## {TITLES.get(name, name)}\n")
        if model.get("description") and name != "Config":
            out.append(f"{_one_line(model['description'])}\n")
        out.append("| key | type | default | meaning |")
        out.append("| --- | --- | --- | --- |")
        required = set(model.get("required", ()))
        for key, prop in model.get("properties", {}).items():
            default = "required" if key in required else _default(prop)
            out.append(f"| `{key}` | {_type(prop)} | {default} | {_one_line(prop.get('description', ''))} |")
    return "\n".join(out) + "\n"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return ""
    value = prop["default"]
    if value is None:
        return "none"
    if isinstance(value, int | float) and not isinstance(value, bool) and "duration" in _type(prop):
        return f"`{format_duration(float(value))}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict) and not value:
        return "empty"
    return f"`{value}`"


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return _ref(prop["$ref"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            parts = [_type(p) for p in prop[key] if p.get("type") != "null"]
            return " or ".join(dict.fromkeys(parts))
    kind = prop.get("type")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"map of {_type(values)}" if isinstance(values, dict) else "map"
    if kind == "string" and "pattern" in prop:
        return "duration" if "ms" in prop.get("pattern", "") else "string"
    return str(kind or "value")


def _ref(ref: str) -> str:
    name = ref.rsplit("/", 1)[-1]
    title = TITLES.get(name, name)
    anchor = "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")
    return f"[{name}](#{anchor})"
