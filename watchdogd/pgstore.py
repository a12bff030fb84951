"""The state store in PostgreSQL: the same interface and meaning as the SQLite ``Store``.

All tables live in one schema (``watchdogd_state`` unless told otherwise), so a
database shared with the application keeps watchdogd's state apart. The schema
is versioned as the SQLite file is, with the same version numbers; it is made
or brought up to date at open, under a transaction-level advisory lock, so two
replicas starting together do not both try. State changes are single
conditional ``UPDATE`` statements: of a veto and an execution racing, exactly
one sees its row change. Times are epoch seconds (double precision); JSON is
kept as the same text the SQLite store holds, so NaN, key order and floats come
back exactly as they were written.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

import asyncpg

from watchdogd.clock import now as steady
from watchdogd.config.types import redact_url
from watchdogd.errors import StoreError
from watchdogd.rollback.journal import FINAL_STATES, RollbackRecord, RollbackState, StepRecord, StepState
from watchdogd.store import SCHEMA_VERSION, AuditEntry, Deployment, DeploymentState

DEFAULT_SCHEMA = "watchdogd_state"
POOL_SIZE = 4
"""The daemon's store calls are short and few at a time; four connections leave room for a slow one."""
CONNECT_TIMEOUT = 10.0
"""A server that does not answer within this at start is reported, not waited on forever."""
COMMAND_TIMEOUT = 30.0
"""A statement stuck on a lock this long fails the call instead of freezing the daemon's loop."""
CLOSE_TIMEOUT = 10.0
"""How long ``aclose`` lets in-flight calls finish before cutting the connections."""

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# Each version's DDL; ``{s}`` is the quoted schema name.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE {s}.rollbacks (
    id text PRIMARY KEY,
    deployment_id text NOT NULL UNIQUE,
    service text NOT NULL,
    state text NOT NULL,
    reasons text NOT NULL,
    target text NOT NULL,
    proposed_at double precision NOT NULL,
    execute_at double precision,
    started_at double precision,
    finished_at double precision,
    error text
);
CREATE INDEX rollbacks_state ON {s}.rollbacks (state, proposed_at);
CREATE TABLE {s}.rollback_steps (
    rollback_id text NOT NULL REFERENCES {s}.rollbacks (id),
    position integer NOT NULL,
    name text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    started_at double precision,
    finished_at double precision,
    error text,
    detail text,
    PRIMARY KEY (rollback_id, position)
);
CREATE TABLE {s}.deployments (
    id text PRIMARY KEY,
    service text NOT NULL,
    image text,
    previous_image text,
    state text NOT NULL,
    started_at double precision NOT NULL,
    window_ends_at double precision NOT NULL,
    finished_at double precision,
    data text NOT NULL
);
CREATE INDEX deployments_service ON {s}.deployments (service, started_at);
CREATE TABLE {s}.rule_states (
    deployment_id text NOT NULL,
    rule text NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (deployment_id, rule)
);
CREATE TABLE {s}.mutes (
    service text NOT NULL,
    rule text NOT NULL,
    until double precision NOT NULL,
    PRIMARY KEY (service, rule)
);
CREATE TABLE {s}.audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at double precision NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    deployment_id text,
    rollback_id text,
    detail text NOT NULL
);
CREATE INDEX audit_deployment ON {s}.audit (deployment_id, seq);
""",
}

_DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_ROLLBACK_COLUMNS = (
    "id, deployment_id, service, state, reasons, target, proposed_at, execute_at, started_at,"
    " finished_at, error"
)
_DEPLOYMENT_COLUMNS = (
    "id, service, image, previous_image, state, started_at, window_ends_at, finished_at, data"
)


class PgStore:
    """Rollbacks, deployments, rule states, mutes and audit in PostgreSQL.

    Open with ``await PgStore.open(dsn)``, which also creates or upgrades the schema.
    """

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], where: str, schema: str, clock: Callable[[], float]
    ) -> None:
        self._pool = pool
        self.where = where
        """The DSN with its password masked: what errors name."""
        self.schema = schema
        self.clock = clock
        self._s = _quote_ident(schema)

    @classmethod
    async def open(
        cls, dsn: str, schema: str = DEFAULT_SCHEMA, clock: Callable[[], float] | None = None
    ) -> PgStore:
        """Connect, then create or upgrade the schema; StoreError when either fails."""
        where = redact_url(dsn)
        if not schema:
            raise StoreError(f"state store {where}: the schema name is empty")
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except (*_DRIVER_ERRORS, ValueError) as exc:
            raise StoreError(f"state store {where}: cannot connect: {_describe(exc, dsn)}") from exc
        store = cls(pool, where, schema, clock or steady)
        try:
            await store._migrate()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self._pool.terminate()

    async def aclose(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"state store {self.where}: {_describe(exc, None)}") from exc

    async def _migrate(self) -> None:
        s = self._s
        async with self._connection() as conn, conn.transaction():
            # Held to the end of the transaction: a second replica waits here, then finds the work done.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"watchdogd:{self.schema}"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL)")
            current = await conn.fetchval(f"SELECT max(version) FROM {s}.schema_version") or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"state store {self.where} (schema {self.schema}) has schema version {current},"
                    f" newer than this watchdogd ({SCHEMA_VERSION}):"
                    " upgrade watchdogd or point it at another schema"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[version].format(s=s))
                await conn.execute(f"DELETE FROM {s}.schema_version")
                await conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ($1)", version)

    # --- rollbacks ------------------------------------------------------------------------

    async def create(
        self,
        deployment_id: str,
        service: str,
        steps: Sequence[str],
        reasons: list[dict[str, Any]],
        target: dict[str, Any],
        state: RollbackState = "pending",
        execute_at: float | None = None,
    ) -> RollbackRecord:
        """A new rollback with its plan; the existing one when the deployment already has one."""
        s = self._s
        rollback_id = uuid.uuid4().hex[:12]
        now = self.clock()
        async with self._connection() as conn, conn.transaction():
            inserted = await conn.fetchval(
                f"INSERT INTO {s}.rollbacks (id, deployment_id, service, state, reasons, target, proposed_at,"
                " execute_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (deployment_id) DO NOTHING RETURNING id",
                rollback_id,
                deployment_id,
                service,
                state,
                json.dumps(reasons),
                json.dumps(target),
                now,
                execute_at,
            )
            if inserted is None:
                found = await conn.fetchval(
                    f"SELECT id FROM {s}.rollbacks WHERE deployment_id = $1", deployment_id
                )
            else:
                found = inserted
                await conn.executemany(
                    f"INSERT INTO {s}.rollback_steps (rollback_id, position, name, state)"
                    " VALUES ($1, $2, $3, 'pending')",
                    [(rollback_id, i, name) for i, name in enumerate(steps)],
                )
        record = await self.get(str(found))
        if record is None:
            raise StoreError(f"state store {self.where}: rollback {found} vanished after it was written")
        return record

    async def add_reason(self, rollback_id: str, reason: dict[str, Any]) -> None:
        """Another firing rule joins the proposal as one more reason."""
        s = self._s
        async with self._connection() as conn, conn.transaction():
            text = await conn.fetchval(
                f"SELECT reasons FROM {s}.rollbacks WHERE id = $1 FOR UPDATE", rollback_id
            )
            if text is not None:
                reasons = json.loads(text)
                reasons.append(reason)
                await conn.execute(
                    f"UPDATE {s}.rollbacks SET reasons = $1 WHERE id = $2", json.dumps(reasons), rollback_id
                )

    async def transition(
        self,
        rollback_id: str,
        to: RollbackState,
        allowed_from: Sequence[RollbackState],
        error: str | None = None,
    ) -> bool:
        """Move the rollback to ``to`` only from one of ``allowed_from``; False when it was elsewhere.

        One statement decides between a veto and the execution: the row lock
        makes the second writer re-check ``state`` and find it changed.
        """
        now = self.clock()
        sql = (
            f"UPDATE {self._s}.rollbacks SET state = $1,"
            " started_at = CASE WHEN $1 = 'executing' THEN COALESCE(started_at, $2) ELSE started_at END,"
            " finished_at = CASE WHEN $1 = ANY($3::text[]) THEN $2 ELSE finished_at END,"
            " error = COALESCE($4, error)"
            " WHERE id = $5 AND state = ANY($6::text[])"
        )
        async with self._connection() as conn:
            status = await conn.execute(
                sql, to, now, list(FINAL_STATES), error, rollback_id, list(allowed_from)
            )
        return _rowcount(status) == 1

    async def step_started(self, rollback_id: str, position: int) -> None:
        now = self.clock()
        async with self._connection() as conn:
            await conn.execute(
                f"UPDATE {self._s}.rollback_steps SET state = 'running', attempts = attempts + 1,"
                " started_at = COALESCE(started_at, $1), error = NULL"
                " WHERE rollback_id = $2 AND position = $3",
                now,
                rollback_id,
                position,
            )

    async def step_finished(
        self, rollback_id: str, position: int, state: StepState, detail: str, error: str | None = None
    ) -> None:
        now = self.clock()
        async with self._connection() as conn:
            await conn.execute(
                f"UPDATE {self._s}.rollback_steps SET state = $1, finished_at = $2, detail = $3, error = $4"
                " WHERE rollback_id = $5 AND position = $6",
                state,
                now,
                detail,
                error,
                rollback_id,
                position,
            )

    async def get(self, rollback_id: str) -> RollbackRecord | None:
        found = await self._rollbacks("id = $1", (rollback_id,))
        return found[0] if found else None

    async def for_deployment(self, deployment_id: str) -> RollbackRecord | None:
        found = await self._rollbacks("deployment_id = $1", (deployment_id,))
        return found[0] if found else None

    async def unfinished(self) -> list[RollbackRecord]:
        """Rollbacks that were executing when the process stopped: to be resumed."""
        return await self.in_states(("executing",))

    async def in_states(self, states: Sequence[RollbackState]) -> list[RollbackRecord]:
        """Rollbacks in any of ``states``, oldest proposal first."""
        return await self._rollbacks("state = ANY($1::text[])", (list(states),))

    async def _rollbacks(self, where: str, params: tuple[Any, ...]) -> list[RollbackRecord]:
        s = self._s
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                f"SELECT {_ROLLBACK_COLUMNS} FROM {s}.rollbacks WHERE {where} ORDER BY proposed_at, id",
                *params,
            )
            if not rows:
                return []
            step_rows = await conn.fetch(
                "SELECT rollback_id, position, name, state, attempts, started_at, finished_at, error, detail"
                f" FROM {s}.rollback_steps WHERE rollback_id = ANY($1::text[])"
                " ORDER BY rollback_id, position",
                [row["id"] for row in rows],
            )
        steps: dict[str, list[StepRecord]] = {}
        for step in step_rows:
            steps.setdefault(step["rollback_id"], []).append(
                StepRecord(
                    position=step["position"],
                    name=step["name"],
                    state=step["state"],
                    attempts=step["attempts"],
                    started_at=step["started_at"],
                    finished_at=step["finished_at"],
                    error=step["error"],
                    detail=step["detail"],
                )
            )
        return [_rollback(row, tuple(steps.get(row["id"], ()))) for row in rows]

    # --- deployments ----------------------------------------------------------------------

    async def add_deployment(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        started_at: float,
        window: float,
        data: dict[str, Any],
    ) -> Deployment:
        """A new deployment being watched; an open one of the same service is superseded."""
        s = self._s
        deployment_id = uuid.uuid4().hex[:12]
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                f"UPDATE {s}.deployments SET state = 'promoted', finished_at = $1"
                " WHERE service = $2 AND state = 'watching'",
                started_at,
                service,
            )
            await conn.execute(
                f"INSERT INTO {s}.deployments (id, service, image, previous_image, state, started_at,"
                " window_ends_at, data) VALUES ($1, $2, $3, $4, 'watching', $5, $6, $7)",
                deployment_id,
                service,
                image,
                previous_image,
                started_at,
                started_at + window,
                json.dumps(data),
            )
        found = await self.deployment(deployment_id)
        if found is None:
            raise StoreError(
                f"state store {self.where}: deployment {deployment_id} vanished after it was written"
            )
        return found

    async def update_deployment(self, deployment_id: str, data: dict[str, Any]) -> None:
        async with self._connection() as conn:
            await conn.execute(
                f"UPDATE {self._s}.deployments SET data = $1 WHERE id = $2", json.dumps(data), deployment_id
            )

    async def set_deployment_state(
        self, deployment_id: str, state: DeploymentState, allowed_from: Sequence[DeploymentState]
    ) -> bool:
        now = self.clock()
        final = state in ("promoted", "rolled_back", "rollback_failed")
        async with self._connection() as conn:
            status = await conn.execute(
                f"UPDATE {self._s}.deployments SET state = $1,"
                " finished_at = CASE WHEN $2 THEN $3 ELSE finished_at END"
                " WHERE id = $4 AND state = ANY($5::text[])",
                state,
                final,
                now,
                deployment_id,
                list(allowed_from),
            )
        return _rowcount(status) == 1

    async def deployment(self, deployment_id: str) -> Deployment | None:
        rows = await self._deployments("id = $1", (deployment_id,))
        return rows[0] if rows else None

    async def deployments(self, open_only: bool = False, limit: int = 200) -> list[Deployment]:
        if open_only:
            return await self._deployments("state IN ('watching', 'rolling_back')", ())
        return await self._deployments("true", (), limit)

    async def _deployments(self, where: str, params: tuple[Any, ...], limit: int = 1000) -> list[Deployment]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_DEPLOYMENT_COLUMNS} FROM {self._s}.deployments WHERE {where}"
                f" ORDER BY started_at DESC LIMIT ${len(params) + 1}",
                *params,
                limit,
            )
        return [_deployment(row) for row in rows]

    # --- rule states ----------------------------------------------------------------------

    async def save_rule_state(self, deployment_id: str, rule: str, state: dict[str, Any]) -> None:
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO {self._s}.rule_states (deployment_id, rule, state) VALUES ($1, $2, $3)"
                " ON CONFLICT (deployment_id, rule) DO UPDATE SET state = excluded.state",
                deployment_id,
                rule,
                json.dumps(state),
            )

    async def rule_states(self, deployment_id: str) -> dict[str, dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT rule, state FROM {self._s}.rule_states WHERE deployment_id = $1", deployment_id
            )
        return {row["rule"]: json.loads(row["state"]) for row in rows}

    # --- mutes ----------------------------------------------------------------------------

    async def mute(self, service: str, rule: str, until: float) -> None:
        s = self._s
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO {s}.mutes (service, rule, until) VALUES ($1, $2, $3)"
                " ON CONFLICT (service, rule)"
                f" DO UPDATE SET until = GREATEST({s}.mutes.until, excluded.until)",
                service,
                rule,
                until,
            )

    async def muted_until(self, service: str, rule: str) -> float | None:
        async with self._connection() as conn:
            until = await conn.fetchval(
                f"SELECT until FROM {self._s}.mutes WHERE service = $1 AND rule = $2", service, rule
            )
        return None if until is None else float(until)

    # --- audit ----------------------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        action: str,
        detail: dict[str, Any],
        deployment_id: str | None = None,
        rollback_id: str | None = None,
    ) -> None:
        now = self.clock()
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO {self._s}.audit (at, actor, action, deployment_id, rollback_id, detail)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                now,
                actor,
                action,
                deployment_id,
                rollback_id,
                json.dumps(detail, default=str),
            )

    async def audit_entries(
        self,
        deployment_id: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 500,
    ) -> list[AuditEntry]:
        clauses: list[str] = []
        params: list[Any] = []
        for condition, value in (("deployment_id =", deployment_id), ("actor =", actor), ("at >=", since)):
            if value is not None:
                params.append(value)
                clauses.append(f"{condition} ${len(params)}")
        params.append(limit)
        where = " AND ".join(clauses) or "true"
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT seq, at, actor, action, deployment_id, rollback_id, detail FROM {self._s}.audit"
                f" WHERE {where} ORDER BY seq LIMIT ${len(params)}",
                *params,
            )
        return [
            AuditEntry(
                seq=row["seq"],
                at=row["at"],
                actor=row["actor"],
                action=row["action"],
                deployment_id=row["deployment_id"],
                rollback_id=row["rollback_id"],
                detail=json.loads(row["detail"]),
            )
            for row in rows
        ]


def _rollback(row: asyncpg.Record, steps: tuple[StepRecord, ...]) -> RollbackRecord:
    return RollbackRecord(
        id=row["id"],
        deployment_id=row["deployment_id"],
        service=row["service"],
        state=row["state"],
        reasons=json.loads(row["reasons"]),
        target=json.loads(row["target"]),
        proposed_at=row["proposed_at"],
        execute_at=row["execute_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        steps=steps,
    )


def _deployment(row: asyncpg.Record) -> Deployment:
    return Deployment(
        id=row["id"],
        service=row["service"],
        image=row["image"],
        previous_image=row["previous_image"],
        state=row["state"],
        started_at=row["started_at"],
        window_ends_at=row["window_ends_at"],
        finished_at=row["finished_at"],
        data=json.loads(row["data"]),
    )


def _rowcount(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _describe(exc: BaseException, dsn: str | None) -> str:
    """The driver's message, with the DSN's password masked should the driver have echoed it."""
    text = str(exc) or type(exc).__name__
    if dsn is not None:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
        text = text.replace(dsn, redact_url(dsn))
    return text
