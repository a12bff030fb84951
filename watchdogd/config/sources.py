"""The config's sources: where watchdogd reads metrics, logs, health and data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from watchdogd.config.base import Model, compile_pattern
from watchdogd.config.types import Duration, SecretUrl


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
            compile_pattern(value)
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
