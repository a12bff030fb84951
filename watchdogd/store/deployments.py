"""Deployments, rule states, mutes and audit over the rollbacks: the whole store, written once.

``SqliteStore`` and ``PgStore`` are this class with a way to run its operations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from watchdogd.model import AuditEntry, Deployment, DeploymentFacts, DeploymentState
from watchdogd.store import rows
from watchdogd.store.actions import ActionTables
from watchdogd.store.group import GroupCommit
from watchdogd.store.rollbacks import RollbackTables, new_id
from watchdogd.store.rows import AUDIT_COLUMNS, DEPLOYMENT_COLUMNS
from watchdogd.store.sql import Mode, Op, change, fetch, marks, texts


class SqlStore(RollbackTables, ActionTables):
    """Every ``Store`` call as SQL both databases take."""

    # --- deployments ----------------------------------------------------------------------

    async def add_deployment(
        self,
        service: str,
        image: str | None,
        previous_image: str | None,
        started_at: float,
        window: float,
        facts: DeploymentFacts,
        idempotency_key: str | None = None,
    ) -> tuple[Deployment, list[Deployment]]:
        new = Deployment(
            new_id(),
            service,
            image,
            previous_image,
            DeploymentState.WATCHING,
            started_at,
            started_at + window,
            None,
            facts,
        )
        return await self._run(self._add_deployment(new, idempotency_key, self.clock()), Mode.WRITE)

    def _add_deployment(
        self, new: Deployment, key: str | None, now: float
    ) -> Op[tuple[Deployment, list[Deployment]]]:
        p = self._p
        if key is not None:
            yield from self._serialize(f"deployment key {key}")
            known = yield from self._deployments("idempotency_key = ?", (key,))
            if known:
                return known[0], []
        # Two registrations of one service at once: the later one supersedes the earlier.
        yield from self._serialize(f"deployments of {new.service}")
        superseded = yield from fetch(
            f"UPDATE {p}deployments SET state = ?, finished_at = ?"
            " WHERE service = ? AND state = ? RETURNING id",
            str(DeploymentState.SUPERSEDED),
            new.started_at,
            new.service,
            str(DeploymentState.WATCHING),
        )
        ids = [row[0] for row in superseded]
        if ids:
            yield from self._cancel(
                f"deployment_id IN {marks(ids)}", ids, f"superseded by deployment {new.id}", now
            )
        row = (*rows.deployment_row(new), key)
        yield from change(
            f"INSERT INTO {p}deployments ({DEPLOYMENT_COLUMNS}, idempotency_key) VALUES {marks(row)}", *row
        )
        [added] = yield from self._deployments("id = ?", (new.id,))
        if not ids:
            return added, []
        return added, (yield from self._deployments(f"id IN {marks(ids)}", ids))

    async def deployment_for_key(self, idempotency_key: str) -> Deployment | None:
        found = await self._run(self._deployments("idempotency_key = ?", (idempotency_key,)), Mode.ONE)
        return found[0] if found else None

    async def update_facts(self, deployment_id: str, facts: DeploymentFacts) -> None:
        op = change(
            f"UPDATE {self._p}deployments SET data = ? WHERE id = ?", rows.facts_json(facts), deployment_id
        )
        await self._run(op, Mode.ONE)

    async def set_deployment_state(
        self, deployment_id: str, state: DeploymentState, allowed_from: Sequence[DeploymentState]
    ) -> bool:
        if not allowed_from:
            return False
        state = DeploymentState(state)
        sets: list[str] = ["state = ?"]
        params: list[Any] = [str(state)]
        if state is DeploymentState.ROLLING_BACK:
            sets.append("finished_at = NULL")  # a retried rollback: the deployment is open again
        elif not state.open:
            sets.append("finished_at = ?")
            params.append(self.clock())
        op = change(
            f"UPDATE {self._p}deployments SET {', '.join(sets)}"
            f" WHERE id = ? AND state IN {marks(allowed_from)}",
            *params,
            deployment_id,
            *texts(allowed_from),
        )
        return await self._run(op, Mode.ONE) == 1

    async def deployment(self, deployment_id: str) -> Deployment | None:
        found = await self._run(self._deployments("id = ?", (deployment_id,)), Mode.ONE)
        return found[0] if found else None

    async def deployments(
        self, open_only: bool = False, limit: int = 200, service: str | None = None
    ) -> list[Deployment]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if open_only:
            opened = (DeploymentState.WATCHING, DeploymentState.ROLLING_BACK)
            where.append(f"state IN {marks(opened)}")
            params += texts(opened)
        if service is not None:
            where.append("service = ?")
            params.append(service)
        op = self._deployments(" AND ".join(where), params, None if open_only else limit)
        return await self._run(op, Mode.ONE)

    def _deployments(
        self, where: str, params: Sequence[Any], limit: int | None = None
    ) -> Op[list[Deployment]]:
        sql = f"SELECT {DEPLOYMENT_COLUMNS} FROM {self._p}deployments WHERE {where} ORDER BY started_at DESC"
        args = tuple(params)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        found = yield from fetch(sql, *args)
        return [rows.deployment(row) for row in found]

    # --- rule states ----------------------------------------------------------------------

    async def save_rule_state(self, deployment_id: str, rule: str, state: dict[str, Any]) -> None:
        await self.save_rule_states([(deployment_id, rule, state)])

    async def save_rule_states(self, states: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        if states:
            await self._run(self._save_rule_states(states), Mode.LAZY)

    def _save_rule_states(self, states: Sequence[tuple[str, str, dict[str, Any]]]) -> Op[None]:
        sql = (
            f"INSERT INTO {self._p}rule_states (deployment_id, rule, state) VALUES (?, ?, ?)"
            " ON CONFLICT (deployment_id, rule) DO UPDATE SET state = excluded.state"
        )
        for deployment_id, rule, state in states:
            yield from change(sql, deployment_id, rule, rows.dumps(state))

    async def rule_states(self, deployment_id: str) -> dict[str, dict[str, Any]]:
        op = fetch(f"SELECT rule, state FROM {self._p}rule_states WHERE deployment_id = ?", deployment_id)
        return {rule: rows.loads(state) for rule, state in await self._run(op, Mode.ONE)}

    # --- mutes ----------------------------------------------------------------------------

    async def mute(self, service: str, rule: str, until: float) -> None:
        op = change(
            f"INSERT INTO {self._p}mutes AS m (service, rule, until) VALUES (?, ?, ?)"
            " ON CONFLICT (service, rule) DO UPDATE"
            " SET until = CASE WHEN excluded.until > m.until THEN excluded.until ELSE m.until END",
            service,
            rule,
            until,
        )
        await self._run(op, Mode.ONE)

    async def muted_until(self, service: str, rule: str) -> float | None:
        op = fetch(f"SELECT until FROM {self._p}mutes WHERE service = ? AND rule = ?", service, rule)
        found = await self._run(op, Mode.ONE)
        return float(found[0][0]) if found else None

    async def unmute(self, service: str, rule: str, *, until_clear_only: bool = False) -> bool:
        sql = f"DELETE FROM {self._p}mutes WHERE service = ? AND rule = ?"
        params: tuple[Any, ...] = (service, rule)
        if until_clear_only:
            sql += " AND until = ?"
            params += (float("inf"),)
        return await self._run(change(sql, *params), Mode.ONE) > 0

    async def mutes(self) -> dict[tuple[str, str], float]:
        found = await self._run(fetch(f"SELECT service, rule, until FROM {self._p}mutes"), Mode.ONE)
        return {(service, rule): float(until) for service, rule, until in found}

    # --- audit ----------------------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        action: str,
        detail: dict[str, Any],
        deployment_id: str | None = None,
        rollback_id: str | None = None,
    ) -> None:
        row = (self.clock(), actor, action, deployment_id, rollback_id, rows.audit_detail(detail))
        await self._audit_commit(row)

    @functools.cached_property
    def _audit_commit(self) -> GroupCommit[tuple[Any, ...]]:
        """Audit lines written together when many come at once, each caller back once it is durable."""
        return GroupCommit(self._write_audit)

    async def _write_audit(self, lines: list[tuple[Any, ...]]) -> None:
        await self._run(self._audit_lines(lines), Mode.WRITE)

    def _audit_lines(self, lines: list[tuple[Any, ...]]) -> Op[None]:
        sql = (
            f"INSERT INTO {self._p}audit (at, actor, action, deployment_id, rollback_id, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        for line in lines:
            yield from change(sql, *line)

    async def audit_entries(
        self,
        deployment_id: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 500,
        before: int | None = None,
    ) -> list[AuditEntry]:
        conditions = (
            ("deployment_id = ?", deployment_id),
            ("actor = ?", actor),
            ("at >= ?", since),
            ("seq < ?", before),
        )
        given = [(condition, value) for condition, value in conditions if value is not None]
        where = " AND ".join(condition for condition, _ in given) or "1 = 1"
        op = fetch(
            f"SELECT {AUDIT_COLUMNS} FROM {self._p}audit WHERE {where} ORDER BY seq DESC LIMIT ?",
            *(value for _, value in given),
            limit,
        )
        return [rows.audit_entry(row) for row in await self._run(op, Mode.ONE)]
