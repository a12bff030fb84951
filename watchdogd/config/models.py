"""The config's models: frozen, strict, unknown keys refused.

These only describe shapes and single-field rules; checks that look across
the config (a rule's source exists, its fields fit that source) live in
``checks.py`` so that each problem is reported at its own field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from watchdogd.config.detection import LatencySpec, SequentialSpec
from watchdogd.config.notify import (  # noqa: F401 (WebhookNotify: kept importable from here)
    NotifyTarget,
    OpsgenieNotify,
    PagerDutyNotify,
    SlackNotify,
    TeamsNotify,
    WebhookNotify,
)
from watchdogd.config.types import Condition, Duration, Percent, SecretUrl
from watchdogd.config.webhook import WebhookStepConfig
from watchdogd.imageref import parse_pattern

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
Mode = Literal["auto", "manual", "dry-run"]
Action = Literal["rollback", "notify"]
Severity = Literal["info", "warning", "critical"]
STEP_NAMES: tuple[str, ...] = ("container", "sql", "restore", "redis_purge", "webhook", "verify")
STEP_PATTERN = r"^(container|sql|restore|redis_purge|webhook|verify|command:[A-Za-z0-9][A-Za-z0-9_.-]*)$"


def _step_name(value: str) -> str:
    if not re.fullmatch(STEP_PATTERN, value):
        raise ValueError(
            "must be 'container', 'sql', 'restore', 'redis_purge', 'webhook', 'verify' or 'command:NAME', "
            f"not {value!r}"
        )
    return value


StepName = Annotated[
    str,
    AfterValidator(_step_name),
    Field(
        json_schema_extra={"pattern": STEP_PATTERN},
        description="container, sql, restore, redis_purge, webhook, verify, or command:NAME (of "
        "rollback.commands)",
    ),
]


class Model(BaseModel):
    """Every config model: frozen after load, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# --- server, state, defaults, logging, notify ----------------------------------


class TlsConfig(Model):
    cert: Path
    key: Path


class ServerConfig(Model):
    listen: str = Field(
        "127.0.0.1:9464",
        description="host:port the API and /metrics listen on; 127.0.0.1 unless written.",
    )
    tokens_file: Path | None = Field(None, description="YAML file of bearer tokens and roles.")
    tls: TlsConfig | None = None
    open_endpoints: tuple[Literal["healthz", "readyz", "metrics"], ...] = Field(
        ("healthz", "readyz", "metrics"),
        description="Endpoints served without a token.",
    )
    max_connections: int = Field(
        1024,
        ge=16,
        le=100_000,
        description="Connections the API holds at once; lowered to fit the open-file limit. At the cap, "
        "the longest-idle connection is closed for a new one.",
    )
    max_streams: int = Field(64, ge=1, le=10_000, description="Event streams (GET /v1/events) open at once.")
    max_streams_per_token: int = Field(
        8, ge=1, le=10_000, description="Event streams open at once with one token; over it, 429."
    )
    header_timeout: Duration = Field(
        10.0,
        gt=0,
        le=300,
        description="A new connection that has not sent complete request headers by then is closed.",
    )
    keepalive_timeout: Duration = Field(
        15.0, gt=0, le=3600, description="An idle keep-alive connection is closed after this long."
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid listen address '{value}': write it as host:port")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StateConfig(Model):
    url: SecretUrl = Field(
        default_factory=lambda: SecretUrl("sqlite:////var/lib/watchdogd/state.db"),
        description="sqlite:////absolute/path.db, sqlite:///relative.db or postgresql://...",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: SecretUrl) -> SecretUrl:
        scheme = value.secret().split(":", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"unsupported state store '{scheme}': use sqlite:// or postgresql://")
        return value


OnUnverified = Literal["hold", "rollback", "promote"]
OnKnownBad = Literal["notify", "rollback"]


class DefaultsConfig(Model):
    interval: Duration = Field(15.0, gt=0, description="How often sources are polled.")
    window: Duration = Field(7200.0, gt=0, description="How long a deploy is watched.")
    grace: Duration = Field(60.0, ge=0, description="Veto window of a rollback proposal.")
    mode: Mode = "auto"
    approval_timeout: Duration | None = Field(
        None, gt=0, description="Manual mode: how long a proposal waits for approval (default: forever)."
    )
    on_approval_timeout: Literal["execute", "cancel"] = Field(
        "cancel", description="Manual mode: what an unanswered proposal does at its approval timeout."
    )
    blind_after: Duration = Field(
        300.0, gt=0, description="A rollback rule with no data this long is notified (it cannot see)."
    )
    min_data: Percent = Field(
        0.0,
        description="The share of a window's evaluations a rollback rule needs data for, or the deploy is"
        " unverified (0%: any data at all).",
    )
    on_unverified: OnUnverified = Field(
        "hold",
        description="A window that ends while a rollback rule had no data: hold (unverified until an"
        " operator promotes or rolls back), rollback (propose one), or promote.",
    )
    freeze_after_rollback: Duration = Field(
        0.0,
        ge=0,
        description="After a rollback (succeeded or failed) the service takes no new deployment for this"
        " long: POST /v1/deployments answers 409 frozen until an operator lifts it (0s: no freeze).",
    )
    known_bad_for: Duration = Field(
        86400.0,
        ge=0,
        description="A deploy of an image ID the service was rolled back from this recently is known bad:"
        " notified and marked (0s: never).",
    )
    on_known_bad: OnKnownBad = Field(
        "notify",
        description="A known-bad image deployed again: notify (and watch it as usual), or rollback (propose"
        " one at once, with the reason).",
    )


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines unless stdout is a terminal."
    )


# --- sources ---------------------------------------------------------------------


class BasicAuth(Model):
    username: str
    password: SecretStr


class SourceBase(Model):
    interval: Duration | None = Field(None, gt=0, description="Overrides the service's interval.")
    timeout: Duration = Field(5.0, gt=0)


class PrometheusSource(SourceBase):
    type: Literal["prometheus"]
    url: SecretUrl
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    basic_auth: BasicAuth | None = None
    bearer_token: SecretStr | None = None
    aggregation: Literal["max", "min", "sum", "avg", "single"] = Field(
        "max",
        description="How several series reduce to one value; single: more than one is an error.",
    )


SWARM_URL_FIELDS = ("slot", "task", "node")
"""What a ``swarm_service`` scrape URL may name of each task: ``{slot}``, ``{task}`` (its ID), ``{node}``."""


class ScrapeSource(SourceBase):
    type: Literal["scrape"]
    url: SecretUrl
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    retention: Duration | None = Field(
        None, gt=0, description="How much history is kept; default: the longest window rules need."
    )
    swarm_service: str | None = Field(
        None,
        min_length=1,
        description="Scrape every running task of this Docker Swarm service and merge them as one: the "
        "url is a template naming each task's {slot}, {task} (ID) or {node} (its node's address), "
        "e.g. http://127.0.0.1:90{slot}/metrics for tasks on host networking listening on "
        "PORT=90{{.Task.Slot}}. Each task's series get a swarm_task label.",
    )

    @model_validator(mode="after")
    def _swarm_url(self) -> ScrapeSource:
        if self.swarm_service is None:
            return self
        text = self.url.secret()
        names = set(re.findall(r"\{([^{}]*)\}", text))
        unknown = sorted(names - set(SWARM_URL_FIELDS))
        if unknown:
            raise ValueError(f"url: unknown placeholder {{{unknown[0]}}}: use {{slot}}, {{task}} or {{node}}")
        if not names & {"slot", "task"}:
            raise ValueError(
                "url: tasks on one host cannot share a port: name each task's {slot} (or {task}) in it"
            )
        return self


class HttpSource(SourceBase):
    type: Literal["http"]
    url: SecretUrl
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    expect_status: tuple[int, ...] = Field((), description="Statuses that count as up; default: any 2xx.")
    body_match: str | None = Field(None, description="Regular expression the body must match.")

    @field_validator("body_match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value


class DockerSource(SourceBase):
    type: Literal["docker"]
    container: str = Field(min_length=1)


class LogSourceBase(SourceBase):
    max_line_bytes: int = Field(65536, gt=0, description="Longer lines are cut, not dropped.")


class DockerLogsSource(LogSourceBase):
    type: Literal["docker_logs"]
    container: str | None = Field(None, min_length=1)
    swarm_service: str | None = Field(
        None,
        min_length=1,
        description="Instead of container: the logs of every task of this Docker Swarm service, "
        "as `docker service logs` reads them.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> DockerLogsSource:
        if (self.container is None) == (self.swarm_service is None):
            raise ValueError("a docker_logs source names one of container or swarm_service")
        return self


class FileSource(LogSourceBase):
    type: Literal["file"]
    path: Path


class PostgresSource(SourceBase):
    type: Literal["postgres"]
    dsn: SecretUrl


class RedisSource(SourceBase):
    type: Literal["redis"]
    url: SecretUrl = Field(default_factory=lambda: SecretUrl("redis://127.0.0.1:6379/0"))
    key: str | tuple[str, ...] = Field(
        description="A list, sorted set or stream; several keys are summed (Bull wait + active)."
    )


class ExecSource(SourceBase):
    """A command run on the source's interval; its exit code, last number or failed tests."""

    type: Literal["exec"]
    command: str | tuple[str, ...] = Field(
        description="A list (program and arguments, no shell); a string only with shell: true."
    )
    shell: bool = Field(False, description="Run the command string through /bin/sh -c.")
    timeout: Duration = Field(
        60.0, gt=0, description="The command (and every process it started) is killed after this long."
    )
    cwd: Path | None = Field(None, description="Working directory; default: the config file's folder.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Added to watchdogd's environment (after env_file)."
    )
    env_file: Path | None = Field(
        None, description="KEY=VALUE lines added to the environment; values are secrets, never logged."
    )
    report: Path | None = Field(
        None, description="JUnit XML report the command writes (relative: to cwd); for failed_tests."
    )
    after_deploy: bool = Field(
        False,
        description="Run only once a deploy is watched: at once after it starts, then every interval.",
    )

    @model_validator(mode="after")
    def _command(self) -> ExecSource:
        if self.shell and not isinstance(self.command, str):
            raise ValueError("with shell: true the command is one string")
        if not self.shell and isinstance(self.command, str):
            raise ValueError("command is a list (program and arguments), or a string with shell: true")
        if not (self.command if isinstance(self.command, str) else self.command and self.command[0]):
            raise ValueError("command is empty")
        return self


class AlertmanagerSource(SourceBase):
    """Alerts Alertmanager posts to ``POST /v1/alertmanager``, kept in memory."""

    type: Literal["alertmanager"]
    max_alerts: int = Field(
        10_000, gt=0, le=1_000_000, description="Alerts kept at most; the oldest are dropped past it."
    )


SourceConfig = Annotated[
    PrometheusSource
    | ScrapeSource
    | HttpSource
    | DockerSource
    | DockerLogsSource
    | FileSource
    | PostgresSource
    | RedisSource
    | ExecSource
    | AlertmanagerSource,
    Field(discriminator="type"),
]
SOURCE_TYPES: tuple[str, ...] = (
    "prometheus",
    "scrape",
    "http",
    "docker",
    "docker_logs",
    "file",
    "postgres",
    "redis",
    "exec",
    "alertmanager",
)
LOG_SOURCE_TYPES: tuple[str, ...] = ("docker_logs", "file")
DOCKER_FIELDS: tuple[str, ...] = (
    "running",
    "crashed",
    "restarts",
    "oom_killed",
    "exit_code",
    "healthy",
    "memory_percent",
    "cpu_percent",
)
HTTP_FIELDS: tuple[str, ...] = ("up", "status", "latency_seconds")
POSTGRES_FIELDS: tuple[str, ...] = ("connected",)
EXEC_FIELDS: tuple[str, ...] = ("exit_code", "last_number", "failed_tests")


# --- rules -------------------------------------------------------------------------


class RateSpec(Model):
    metric: str = Field(min_length=1)
    over: Duration = Field(gt=0)


class RatioSpec(Model):
    numerator: str = Field(min_length=1)
    denominator: str = Field(min_length=1)
    over: Duration = Field(gt=0)


class QuantileSpec(Model):
    metric: str = Field(min_length=1, description="Histogram name, without _bucket.")
    q: float = Field(gt=0, le=1)
    over: Duration = Field(gt=0)


class FailuresSpec(Model):
    count: int = Field(gt=0)
    of: int | None = Field(
        None, gt=0, description="Out of the last N evaluations; without it, within the window."
    )


class BaselineSpec(Model):
    before: Duration = Field(gt=0, description="Pre-deploy span whose mean is the baseline.")
    tolerance: Percent = 0.0
    min: Percent | None = Field(
        None,
        description="Absolute floor for rules that fire above the baseline (> or >=): the value must"
        " also pass it, so a baseline near 0 cannot fire on a speck.",
    )


class OnMissingSpec(Model):
    after: Duration = Field(0.0, ge=0)
    result: Literal["hold", "fail", "pass"] = "hold"


class RuleConfig(Model):
    name: Name
    source: str
    description: str | None = None
    # what is measured: exactly one fits the source's type (checked in checks.py)
    query: str | None = Field(None, description="PromQL (prometheus) or SQL (postgres).")
    metric: str | None = None
    rate: RateSpec | None = None
    ratio: RatioSpec | None = None
    quantile: QuantileSpec | None = None
    sequential: SequentialSpec | None = Field(
        None, description="Errors over requests judged as they arrive, with a stated false-rollback rate."
    )
    latency: LatencySpec | None = Field(
        None, description="A latency histogram after the deploy against before it: a quantile's slowdown."
    )
    field: str | None = Field(None, description="docker, http, postgres or exec field.")
    alerts: str | None = Field(
        None,
        description='alertmanager: label matchers, like \'alertname="HighErrorRate", service="api"\'; '
        "the value is the number of matching alerts firing.",
    )
    pattern: str | None = Field(None, description="Regular expression over log lines.")
    over: Duration | None = Field(None, gt=0, description="Window counted for log patterns.")
    absent_for: Duration | None = Field(None, gt=0, description="Fires when no line matches for this long.")
    # when it is bad
    condition: Condition | None = None
    clear_condition: Condition | None = None
    for_: Duration = Field(0.0, alias="for", ge=0)
    failures: FailuresSpec | None = None
    immediate: bool = False
    baseline: BaselineSpec | None = None
    on_missing: OnMissingSpec = Field(default_factory=OnMissingSpec)
    keep_firing_for: Duration = Field(0.0, ge=0)
    initial_delay: Duration | None = Field(
        None,
        ge=0,
        description="No evaluation until this long after the deploy (default: the service's): a query"
        " over a window reads the old version's data until the window has passed the deploy.",
    )
    # what to do
    severity: Severity = "critical"
    action: Action = Field(
        "notify", description="rollback must be asked for; a rule only notifies by default."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value


# --- services ----------------------------------------------------------------------


class MigrationsTable(Model):
    """The app's own migration table, updated in the rollback's transaction.

    What each kind becomes, matched on the migration's id:

    - prisma: ``rolled_back_at`` set on its ``_prisma_migrations`` row (by
      ``migration_name``), as ``prisma migrate resolve --rolled-back`` does; Prisma
      then counts it as not applied and ``migrate deploy`` applies it again;
    - alembic: ``alembic_version`` set to the down revision the rollback SQL names
      (``-- watchdogd:previous-version REV``; a script without it is refused);
    - flyway: its ``flyway_schema_history`` row (by ``version``) deleted, so that
      Flyway sees it as pending (a ``success = false`` row would block ``migrate``);
    - golang-migrate: ``schema_migrations`` set to the previous version
      (``-- watchdogd:previous-version N``, required) with ``dirty = false``;
    - liquibase: the changeset's ``databasechangelog`` row deleted, as ``liquibase
      rollback`` does; it is named by file, id and author together
      (``-- watchdogd:changeset FILE::ID::AUTHOR``, required);
    - sqitch: in the registry schema (default ``sqitch``), the change (by name or
      ``change_id``) removed from ``changes`` with its tags and dependencies and a
      ``revert`` event recorded in ``events``, as ``sqitch revert`` does;
    - atlas: its ``atlas_schema_revisions`` row (by ``version``) deleted, as
      ``atlas migrate down`` does.
    """

    kind: Literal["prisma", "alembic", "flyway", "golang-migrate", "liquibase", "sqitch", "atlas"]
    table: str | None = Field(
        None, description="Default: the tool's own table name (sqitch: not set, its registry has several)."
    )
    schema_: str | None = Field(
        None, alias="schema", description="Default: public; sqitch: sqitch; atlas: atlas_schema_revisions."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sqitch_table(self) -> MigrationsTable:
        if self.kind == "sqitch" and self.table is not None:
            raise ValueError("sqitch keeps several tables in its registry schema: set schema, not table")
        return self

    @property
    def schema_name(self) -> str:
        defaults = {"sqitch": "sqitch", "atlas": "atlas_schema_revisions"}
        return self.schema_ or defaults.get(self.kind, "public")

    @property
    def table_name(self) -> str:
        defaults = {
            "prisma": "_prisma_migrations",
            "alembic": "alembic_version",
            "flyway": "flyway_schema_history",
            "golang-migrate": "schema_migrations",
            "liquibase": "databasechangelog",
            "sqitch": "changes",
            "atlas": "atlas_schema_revisions",
        }
        return self.table or defaults[self.kind]


MigrationLayout = Literal["plain", "prisma", "flyway", "alembic", "golang-migrate"]


class MigrationsDir(Model):
    """Where the operators' rollback SQL lives, read by migration id when a deployment is registered.

    - plain: ``DIR/ID/down.sql``, optional ``DIR/ID/verify.sql`` (one query per statement);
    - prisma: ``DIR/ID/down.sql`` (and ``verify.sql``) beside Prisma's ``DIR/ID/migration.sql``;
    - flyway: the undo script ``DIR/U<ID>__*.sql`` of ``DIR/V<ID>__*.sql``;
    - alembic: ``DIR/<ID>.down.sql``, the offline SQL of
      ``alembic downgrade --sql ID:<down revision>`` (Alembic's downgrades are Python:
      only their offline SQL can be read, hashed and reviewed before it runs);
    - golang-migrate: ``DIR/<ID>_<name>.down.sql``.

    ``verify.sql`` (``<ID>.verify.sql``, ``<ID>_<name>.verify.sql``, ``V<ID>__*.verify.sql``
    in the other layouts) is optional: each of its statements must return true.
    """

    dir: Path
    layout: MigrationLayout = "plain"


class DatabaseConfig(Model):
    dsn: SecretUrl
    migrations: MigrationsDir | None = Field(
        None,
        description="The directory the down SQL and verify queries are read from, by migration id; "
        "a deployment names its migrations by id only.",
    )
    sql_from_api: bool = Field(
        False,
        description="Accept down_sql and verify_sql inside POST /v1/deployments; then only schema changes "
        "in `schemas` and verify queries that read the catalog.",
    )
    schemas: tuple[Name, ...] = Field(
        ("public",),
        min_length=1,
        description="The service's own schemas: the only ones SQL sent in a request may change.",
    )
    allow_superuser: bool = Field(
        False, description="Let the sql step connect as a PostgreSQL superuser (rolsuper); refused otherwise."
    )
    lock_timeout: Duration = Field(5.0, gt=0)
    statement_timeout: Duration = Field(60.0, gt=0)
    lock_wait: Duration = Field(30.0, ge=0, description="How long to wait for the advisory lock.")
    migrations_table: MigrationsTable | None = None
    retries: int = Field(
        3,
        ge=0,
        le=20,
        description="Retries of the rollback transaction after a lock timeout, statement timeout, "
        "serialization failure, deadlock or a connection lost before COMMIT (then over a new connection).",
    )
    retry_backoff: Duration = Field(
        1.0, ge=0, description="Wait before the first retry; doubled at each further retry."
    )
    destructive: Literal["auto", "approve", "refuse"] = Field(
        "approve",
        description="When the rollback SQL would drop tables or columns that hold rows: auto runs it; "
        "approve waits for an operator's approval first; refuse never runs it (container-only rollback).",
    )
    rehearse_first: bool = Field(
        False,
        description="Rehearse the rollback SQL (in a transaction rolled back) just before the real run; "
        "a failed rehearsal stops the step with its reason and nothing is applied.",
    )


class ContainerStepConfig(Model):
    stop_timeout: Duration = Field(30.0, ge=0)
    healthy_timeout: Duration = Field(60.0, gt=0)
    settle: Duration = Field(5.0, ge=0, description="Running this long counts as healthy.")
    pull: bool = Field(False, description="Pull the previous image when it is not local.")


REDIS_GLOB = "*?[]\\"


class QueuePurge(Model):
    """A queue whose jobs the purge removes, by its library's key layout."""

    layout: Literal["bull", "celery"] = Field(
        description="bull: Bull/BullMQ (`PREFIX:QUEUE:ID` job hashes, `:wait`, `:active`, `:delayed`, "
        "`:paused`, ...); celery: Celery's Redis broker (the list `QUEUE`, its priority lists, "
        "its messages in `unacked`)."
    )
    queue: str = Field(min_length=1, max_length=200, description="The queue's name.")
    prefix: str | None = Field(
        None,
        description="Key prefix: Bull's `prefix` option (default `bull`); Celery's `global_keyprefix` "
        "(default none).",
    )
    since_deploy: bool = Field(
        False,
        description="Only jobs created after the deploy started (Bull only: its job hashes carry "
        "`timestamp`; Celery messages carry no creation time).",
    )

    @model_validator(mode="after")
    def _honest(self) -> QueuePurge:
        if any(ch in self.queue for ch in REDIS_GLOB) or not self.queue.strip():
            raise ValueError(f"queue: '{self.queue}' is a queue name, not a pattern (no * ? [ ] \\)")
        if self.layout == "bull" and ":" in self.queue:
            raise ValueError(f"queue: a Bull queue name has no ':' ('{self.queue}')")
        if self.since_deploy and self.layout == "celery":
            raise ValueError(
                "since_deploy: Celery messages carry no creation time; purge the whole queue instead"
            )
        return self


class RedisPurgeConfig(Model):
    """Keys the rollback removes: exact keys, patterns (SCAN MATCH, then UNLINK) and queues by layout."""

    url: SecretUrl = Field(default_factory=lambda: SecretUrl("redis://127.0.0.1:6379/0"))
    keys: tuple[str, ...] = Field((), description="Exact key names.")
    patterns: tuple[str, ...] = Field(
        (),
        description="Glob patterns (Redis MATCH syntax), each with a literal prefix of at least 3 "
        "characters before its first wildcard; found by SCAN, never KEYS.",
    )
    queues: tuple[QueuePurge, ...] = ()
    batch: int = Field(500, ge=1, le=10000, description="Keys per SCAN COUNT and per UNLINK.")
    max_keys: int = Field(
        1_000_000, ge=1, description="The step fails rather than remove more keys than this."
    )
    timeout: Duration = Field(120.0, gt=0, description="The whole purge; then the step fails.")

    @model_validator(mode="after")
    def _something_safe(self) -> RedisPurgeConfig:
        if not (self.keys or self.patterns or self.queues):
            raise ValueError("redis_purge needs keys, patterns or queues")
        for pattern in self.patterns:
            literal = re.split(r"[*?\[\\]", pattern, maxsplit=1)[0]
            if len(literal) < 3:
                raise ValueError(
                    f"patterns: '{pattern}' needs a literal prefix of at least 3 characters before its "
                    "first wildcard (a pattern that broad could remove another application's keys)"
                )
        return self


class CommandStepConfig(Model):
    """A program the rollback runs (``rollback.sh BACKUP``, ``deploy.sh --version V``).

    ``argv`` runs as it is, no shell, unless ``shell: true`` (then ``argv`` is one
    string for ``/bin/sh -c``). ``${service}``, ``${deployment_id}``, ``${image}``,
    ``${previous_image}`` and ``${previous_tag}`` in an argument are replaced by the
    rollback's own values; the same values are in the environment as
    ``WATCHDOGD_SERVICE``, ``WATCHDOGD_DEPLOYMENT_ID``, ``WATCHDOGD_IMAGE``,
    ``WATCHDOGD_PREVIOUS_IMAGE``, ``WATCHDOGD_PREVIOUS_TAG``, ``WATCHDOGD_REASON``.
    """

    argv: tuple[str, ...] = Field(min_length=1)
    shell: bool = Field(False, description="Run argv[0] with /bin/sh -c (argv must then be one string).")
    env: dict[str, str] = Field(default_factory=dict, description="Added to the environment.")
    env_file: Path | None = Field(
        None,
        description="KEY=VALUE lines added to the environment, read when the step runs; its values are "
        "secrets: masked in the output kept in the report.",
    )
    inherit_env: bool = Field(
        False,
        description="Pass watchdogd's whole environment; by default only PATH, HOME, LANG, LC_ALL, TZ.",
    )
    cwd: Path | None = None
    timeout: Duration = Field(300.0, gt=0, description="Then the process group gets SIGTERM.")
    kill_after: Duration = Field(10.0, ge=0, description="SIGKILL this long after the SIGTERM of a timeout.")
    ok_exit_codes: tuple[int, ...] = Field((0,), min_length=1)
    idempotent: bool = Field(
        False,
        description="Safe to run again: on resume after a crash it runs again even when it had finished "
        "or was running (otherwise a finished one is not run again, and one cut off waits for a retry).",
    )
    output_limit: int = Field(
        16384, ge=256, le=1048576, description="Bytes of stdout and of stderr kept (the start and the end)."
    )

    @model_validator(mode="after")
    def _shell_one_string(self) -> CommandStepConfig:
        if self.shell and len(self.argv) != 1:
            raise ValueError("with shell: true, argv is one string (the script for /bin/sh -c)")
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env: '{key}' is not a variable name")
        known = ("service", "deployment_id", "image", "previous_image", "previous_tag")
        for arg in () if self.shell else self.argv:
            for name in re.findall(r"\$\{([^}]*)\}", arg):
                if name not in known:
                    raise ValueError(f"argv: unknown placeholder ${{{name}}} (known: {', '.join(known)})")
        return self


class RestoreStepConfig(Model):
    """Restores the database from the backup the deployment names (see docs/rollback-steps.md)."""

    approve: bool = Field(
        True,
        description="Wait for an operator's approval before a rollback that would restore (what was "
        "written after the backup leaves the live database); false: it runs as the service's mode says.",
    )
    timeout: Duration = Field(1800.0, gt=0, description="pg_restore and the row counts together.")
    keep_replaced: bool = Field(
        True,
        description="Keep the replaced database, renamed NAME_replaced_..., with what was written after "
        "the backup; false: drop it once the restored one is in place.",
    )
    swap_attempts: int = Field(
        5, ge=1, le=50, description="Tries at the rename while the application keeps reconnecting."
    )


class VerifyStepConfig(Model):
    timeout: Duration = Field(120.0, gt=0)


class RollbackConfig(Model):
    steps: tuple[StepName, ...] = ("container", "sql", "verify")
    container: ContainerStepConfig = Field(default_factory=ContainerStepConfig)
    redis_purge: RedisPurgeConfig | None = None
    restore: RestoreStepConfig = Field(default_factory=RestoreStepConfig)
    webhook: WebhookStepConfig | None = None
    verify: VerifyStepConfig = Field(default_factory=VerifyStepConfig)
    commands: dict[Name, CommandStepConfig] = Field(
        default_factory=dict, description="Programs the plan runs as steps `command:NAME`."
    )


class ComposeTarget(Model):
    """A Docker Compose service: every container labelled with its project and service."""

    project: str = Field(min_length=1, description="The Compose project (com.docker.compose.project).")
    service: str = Field(min_length=1, description="The Compose service (com.docker.compose.service).")


class ServiceConfig(Model):
    container: str | None = Field(None, description="Docker container name.")
    compose: ComposeTarget | None = Field(
        None,
        description="Instead of container: a Docker Compose service, every replica rolled back together "
        "and the project left as the next `docker compose up` expects.",
    )
    swarm_service: str | None = Field(
        None,
        min_length=1,
        description="Instead of container: a Docker Swarm service (its name), rolled back to its previous "
        "spec as `docker service rollback` does; the step waits until every task runs the previous image.",
    )
    images: tuple[str, ...] = Field(
        (),
        description="Image repositories the container step may start (and, with rollback.container.pull, "
        "pull) besides an image watchdogd saw running for this service: `registry.example.com/team/api` "
        "(any tag), `registry.example.com/team/api:v1.*` (matching tags), `registry.example.com/team/*` "
        "(one path level). The registry is written out, never a wildcard; see docs/operations.md.",
    )
    health: str | None = Field(None, description="An http source: the service's health probe.")
    database: DatabaseConfig | None = None
    interval: Duration | None = Field(None, gt=0)
    window: Duration | None = Field(None, gt=0)
    initial_delay: Duration = Field(
        0.0, ge=0, description="Default of its rules' initial_delay (prometheus queries over windows)."
    )
    grace: Duration | None = Field(None, ge=0)
    mode: Mode | None = None
    approval_timeout: Duration | None = Field(None, gt=0)
    on_approval_timeout: Literal["execute", "cancel"] | None = None
    blind_after: Duration | None = Field(None, gt=0)
    min_data: Percent | None = None
    on_unverified: OnUnverified | None = None
    freeze_after_rollback: Duration | None = Field(None, ge=0, description="Default: defaults'.")
    known_bad_for: Duration | None = Field(None, ge=0, description="Default: defaults'.")
    on_known_bad: OnKnownBad | None = None
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)
    rules: tuple[RuleConfig, ...] = ()

    @field_validator("images")
    @classmethod
    def _images(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                parse_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"images: '{pattern}': {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_target(self) -> ServiceConfig:
        named = [k for k in ("container", "compose", "swarm_service") if getattr(self, k) is not None]
        if len(named) > 1:
            raise ValueError(f"a service names one target: container, compose or swarm_service, not {named}")
        return self

    def plan(self) -> tuple[StepName, ...]:
        """The rollback's steps: as written, or (not written) those the service has what they need for.

        A service with no database does not get a ``sql`` step it would refuse,
        nor one with no container a ``container`` step; ``verify`` always comes last.
        """
        if "steps" in self.rollback.model_fields_set:
            return self.rollback.steps
        has: dict[str, bool] = {
            "container": self.container is not None
            or self.compose is not None
            or self.swarm_service is not None,
            "sql": self.database is not None,
            "redis_purge": self.rollback.redis_purge is not None,
            "webhook": self.rollback.webhook is not None,
            "verify": True,
        }
        commands = tuple(f"command:{name}" for name in self.rollback.commands)
        order = ("container", "sql", *commands, "redis_purge", "webhook", "verify")
        return tuple(step for step in order if has.get(step, True))


class BackupsConfig(Model):
    """Where and how `pg_dump -Fc` backups are taken (POST /v1/services/NAME/backups, ctl backup)."""

    dir: Path | None = Field(
        None,
        description="Where dumps are kept (default: `backups/` beside a sqlite state file; required with "
        "a postgresql state store).",
    )
    max_size: int = Field(
        10 * 1024**3, gt=0, description="Bytes; a dump growing past this is stopped and removed."
    )
    timeout: Duration = Field(1800.0, gt=0, description="A pg_dump running longer is stopped.")
    keep: int = Field(5, ge=1, le=1000, description="Newest backups kept per service; older ones pruned.")
    max_age: Duration | None = Field(
        None, gt=0, description="Backups older than this are pruned (the newest is always kept)."
    )
    bin_dir: Path | None = Field(
        None,
        description="Where pg_dump and pg_restore are (default: PATH, then the newest "
        "/usr/lib/postgresql/*/bin); they should be at least the server's major version.",
    )


class GroupConfig(Model):
    """Services rolled back together: one proposal, one veto window, one decision, steps in ``order``."""

    services: tuple[Name, ...] = Field(
        min_length=2, description="The members; a service belongs to at most one group."
    )
    order: tuple[Name, ...] | None = Field(
        None,
        description="The order their plans run in, every member once (default: as `services` lists them).",
    )

    @property
    def sequence(self) -> tuple[str, ...]:
        return self.order if self.order is not None else self.services


class Config(Model):
    """A whole config file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    notify: tuple[NotifyTarget, ...] = ()
    sources: dict[Name, SourceConfig] = Field(default_factory=dict)
    services: dict[Name, ServiceConfig] = Field(default_factory=dict)
    backups: BackupsConfig = Field(default_factory=BackupsConfig)
    groups: dict[Name, GroupConfig] = Field(
        default_factory=dict,
        description="Services rolled back together (docs/rollback-steps.md, Service groups).",
    )

    def group_of(self, service: str) -> str | None:
        """The group ``service`` belongs to (None: it is rolled back alone)."""
        return next((name for name, group in self.groups.items() if service in group.services), None)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
