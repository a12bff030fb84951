"""The config's models: frozen, strict, unknown keys refused (sources in ``sources.py``, rollback
steps in ``steps.py``, both importable from here).

These only describe shapes and single-field rules; checks that look across
the config (a rule's source exists, its fields fit that source) live in
``checks.py`` so that each problem is reported at its own field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from watchdogd.config.base import (
    NAME_PATTERN as NAME_PATTERN,
)
from watchdogd.config.base import (
    STEP_NAMES as STEP_NAMES,
)
from watchdogd.config.base import (
    STEP_PATTERN as STEP_PATTERN,
)
from watchdogd.config.base import (
    Action as Action,
)
from watchdogd.config.base import (
    Mode as Mode,
)
from watchdogd.config.base import (
    Model as Model,
)
from watchdogd.config.base import (
    Name as Name,
)
from watchdogd.config.base import (
    Severity as Severity,
)
from watchdogd.config.base import (
    StepName as StepName,
)
from watchdogd.config.base import (
    compile_pattern as compile_pattern,
)
from watchdogd.config.detection import LatencySpec, SequentialSpec
from watchdogd.config.notify import (
    NotifyTarget as NotifyTarget,
)
from watchdogd.config.notify import (
    WebhookNotify as WebhookNotify,
)
from watchdogd.config.sources import (
    DOCKER_FIELDS as DOCKER_FIELDS,
)
from watchdogd.config.sources import (
    EXEC_FIELDS as EXEC_FIELDS,
)
from watchdogd.config.sources import (
    HTTP_FIELDS as HTTP_FIELDS,
)
from watchdogd.config.sources import (
    LOG_SOURCE_TYPES as LOG_SOURCE_TYPES,
)
from watchdogd.config.sources import (
    POSTGRES_FIELDS as POSTGRES_FIELDS,
)
from watchdogd.config.sources import (
    SOURCE_TYPES as SOURCE_TYPES,
)
from watchdogd.config.sources import (
    SWARM_URL_FIELDS as SWARM_URL_FIELDS,
)
from watchdogd.config.sources import (
    AlertmanagerSource as AlertmanagerSource,
)
from watchdogd.config.sources import (
    BasicAuth as BasicAuth,
)
from watchdogd.config.sources import (
    DockerLogsSource as DockerLogsSource,
)
from watchdogd.config.sources import (
    DockerSource as DockerSource,
)
from watchdogd.config.sources import (
    ExecSource as ExecSource,
)
from watchdogd.config.sources import (
    FileSource as FileSource,
)
from watchdogd.config.sources import (
    HttpSource as HttpSource,
)
from watchdogd.config.sources import (
    LogSourceBase as LogSourceBase,
)
from watchdogd.config.sources import (
    PostgresSource as PostgresSource,
)
from watchdogd.config.sources import (
    PrometheusSource as PrometheusSource,
)
from watchdogd.config.sources import (
    RedisSource as RedisSource,
)
from watchdogd.config.sources import (
    ScrapeSource as ScrapeSource,
)
from watchdogd.config.sources import (
    SourceBase as SourceBase,
)
from watchdogd.config.sources import (
    SourceConfig as SourceConfig,
)
from watchdogd.config.steps import (
    REDIS_GLOB as REDIS_GLOB,
)
from watchdogd.config.steps import (
    CommandStepConfig as CommandStepConfig,
)
from watchdogd.config.steps import (
    ContainerStepConfig as ContainerStepConfig,
)
from watchdogd.config.steps import (
    DatabaseConfig as DatabaseConfig,
)
from watchdogd.config.steps import (
    MigrationLayout as MigrationLayout,
)
from watchdogd.config.steps import (
    MigrationsDir as MigrationsDir,
)
from watchdogd.config.steps import (
    MigrationsTable as MigrationsTable,
)
from watchdogd.config.steps import (
    QueuePurge as QueuePurge,
)
from watchdogd.config.steps import (
    RedisPurgeConfig as RedisPurgeConfig,
)
from watchdogd.config.steps import (
    RestoreStepConfig as RestoreStepConfig,
)
from watchdogd.config.steps import (
    RollbackConfig as RollbackConfig,
)
from watchdogd.config.steps import (
    VerifyStepConfig as VerifyStepConfig,
)
from watchdogd.config.types import Condition, Duration, Percent, SecretUrl
from watchdogd.config.webhook import WebhookStepConfig as WebhookStepConfig
from watchdogd.imageref import parse_pattern

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
            compile_pattern(value)
        return value


# --- services ----------------------------------------------------------------------
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
