"""The config's rollback steps: databases and their migrations, containers, queues, commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from watchdogd.config.base import Model, Name, StepName
from watchdogd.config.types import Duration, SecretUrl
from watchdogd.config.webhook import WebhookStepConfig


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
