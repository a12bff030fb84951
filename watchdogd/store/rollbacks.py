"""Rollbacks and their steps, written once for both databases."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from watchdogd.errors import StoreError
from watchdogd.model import PROPOSED_STATES, Reason, RollbackRecord, RollbackState, StepRecord, StepState
from watchdogd.store import rows
from watchdogd.store.rows import ROLLBACK_COLUMNS, STEP_COLUMNS
from watchdogd.store.sql import Mode, Op, SqlBase, change, fetch, marks, texts


def new_id() -> str:
    return uuid.uuid4().hex[:12]


OPEN_ROLLBACK_STATES = (*PROPOSED_STATES, RollbackState.EXECUTING)
"""At most one per deployment: the partial unique index ``rollbacks_open``."""
OLDEST_FIRST = "proposed_at, (finished_at IS NULL), finished_at, id"
NEWEST_FIRST = "proposed_at DESC, (finished_at IS NULL) DESC, finished_at DESC, id DESC"
"""Proposals made at the same instant (a clock that did not move) still sort: the open one is the newest."""
JOIN_ATTEMPTS = 3
"""A proposal vetoed or approved while being joined is read again; another race each time is not expected."""


class RollbackTables(SqlBase):
    """The ``Store`` calls on rollbacks and their steps."""

    async def propose(
        self,
        deployment_id: str,
        service: str,
        steps: Sequence[str],
        reason: Reason,
        target: dict[str, Any],
        state: RollbackState,
        execute_at: float | None,
    ) -> tuple[RollbackRecord, bool]:
        plan = tuple(
            StepRecord(n, name, StepState.PENDING, 0, None, None, None, None) for n, name in enumerate(steps)
        )
        new = RollbackRecord(
            id=new_id(),
            deployment_id=deployment_id,
            service=service,
            state=state,
            reasons=(reason,),
            target=target,
            proposed_at=self.clock(),
            execute_at=execute_at,
            started_at=None,
            finished_at=None,
            error=None,
            steps=plan,
        )
        return await self._run(self._propose(new), Mode.WRITE)

    def _propose(self, new: RollbackRecord) -> Op[tuple[RollbackRecord, bool]]:
        p = self._p
        yield from self._serialize(f"rollbacks of {new.deployment_id}")
        for _ in range(JOIN_ATTEMPTS):
            found = yield from self._rollbacks(
                f"deployment_id = ? AND state IN {marks(OPEN_ROLLBACK_STATES)}",
                (new.deployment_id, *texts(OPEN_ROLLBACK_STATES)),
            )
            if not found:
                row = rows.rollback_row(new)
                yield from change(f"INSERT INTO {p}rollbacks ({ROLLBACK_COLUMNS}) VALUES {marks(row)}", *row)
                if new.steps:
                    plan = [rows.step_row(new.id, step) for step in new.steps]
                    yield from change(
                        f"INSERT INTO {p}rollback_steps ({STEP_COLUMNS})"
                        f" VALUES {', '.join(marks(step) for step in plan)}",
                        *(value for step in plan for value in step),
                    )
                return (yield from self._rollback(new.id)), True
            [current] = found
            if not current.proposed:
                return current, False  # executing: the plan is under way, nothing joins it
            [reason] = new.reasons
            reasons = current.reasons
            # a rule joins once; in a group's proposal, once per member (two members' rules may share a name)
            if reason.rule is None or (reason.service, reason.rule) not in {
                (r.service, r.rule) for r in reasons
            }:
                reasons = (*reasons, reason)
            due = current.execute_at
            if due is not None and new.execute_at is not None:
                due = min(due, new.execute_at)
            joined = yield from change(
                f"UPDATE {p}rollbacks SET reasons = ?, execute_at = ?"
                f" WHERE id = ? AND state IN {marks(PROPOSED_STATES)}",
                rows.reasons_json(reasons),
                due,
                current.id,
                *texts(PROPOSED_STATES),
            )
            if joined:
                return (yield from self._rollback(current.id)), False
        raise StoreError(f"state store {self._where}: the proposal for {new.deployment_id} kept changing")

    async def update_target(
        self, rollback_id: str, target: dict[str, Any], allowed_from: Sequence[RollbackState]
    ) -> bool:
        if not allowed_from:
            return False
        op = change(
            f"UPDATE {self._p}rollbacks SET target = ? WHERE id = ? AND state IN {marks(allowed_from)}",
            rows.dumps(target),
            rollback_id,
            *texts(allowed_from),
        )
        return await self._run(op, Mode.ONE) == 1

    async def transition(
        self,
        rollback_id: str,
        to: RollbackState,
        allowed_from: Sequence[RollbackState],
        error: str | None = None,
    ) -> bool:
        if not allowed_from:
            return False
        to = RollbackState(to)
        now = self.clock()
        p = self._p
        sets: list[str] = ["state = ?"]
        params: list[Any] = [str(to)]
        if to is RollbackState.EXECUTING:
            # A retry of a failed rollback is neither finished nor failed any more.
            sets += ["started_at = COALESCE(started_at, ?)", "finished_at = NULL", "error = ?"]
            params += [now, error]
        else:
            if to.final:
                sets.append("finished_at = ?")
                params.append(now)
            if error is not None:
                sets.append("error = ?")
                params.append(error)
        where = f"id = ? AND state IN {marks(allowed_from)}"
        params += [rollback_id, *texts(allowed_from)]
        if to in OPEN_ROLLBACK_STATES:
            # Reopening a final one while the deployment has another open one answers
            # False, where the partial unique index ``rollbacks_open`` would raise.
            where += (
                f" AND NOT EXISTS (SELECT 1 FROM {p}rollbacks AS other"
                f" WHERE other.deployment_id = {p}rollbacks.deployment_id"
                f" AND other.id <> {p}rollbacks.id AND other.state IN {marks(OPEN_ROLLBACK_STATES)})"
            )
            params += texts(OPEN_ROLLBACK_STATES)
        op = change(f"UPDATE {p}rollbacks SET {', '.join(sets)} WHERE {where}", *params)
        return await self._run(op, Mode.ONE) == 1

    async def step_started(self, rollback_id: str, position: int) -> None:
        op = change(
            f"UPDATE {self._p}rollback_steps SET state = ?, attempts = attempts + 1,"
            " started_at = COALESCE(started_at, ?), error = NULL WHERE rollback_id = ? AND position = ?",
            str(StepState.RUNNING),
            self.clock(),
            rollback_id,
            position,
        )
        await self._run(op, Mode.ONE)

    async def step_finished(
        self, rollback_id: str, position: int, state: StepState, detail: str, error: str | None = None
    ) -> None:
        op = change(
            f"UPDATE {self._p}rollback_steps SET state = ?, finished_at = ?, detail = ?, error = ?"
            " WHERE rollback_id = ? AND position = ?",
            str(state),
            self.clock(),
            detail,
            error,
            rollback_id,
            position,
        )
        await self._run(op, Mode.ONE)

    async def get(self, rollback_id: str) -> RollbackRecord | None:
        found = await self._run(self._rollbacks("id = ?", (rollback_id,)), Mode.READ)
        return found[0] if found else None

    async def latest_for(self, deployment_id: str) -> RollbackRecord | None:
        op = self._rollbacks("deployment_id = ?", (deployment_id,), NEWEST_FIRST, limit=1)
        found = await self._run(op, Mode.READ)
        return found[0] if found else None

    async def for_deployment(self, deployment_id: str) -> list[RollbackRecord]:
        return await self._run(self._rollbacks("deployment_id = ?", (deployment_id,)), Mode.READ)

    async def unfinished(self) -> list[RollbackRecord]:
        return await self.in_states((RollbackState.EXECUTING,))

    async def in_states(self, states: Sequence[RollbackState]) -> list[RollbackRecord]:
        if not states:
            return []
        op = self._rollbacks(f"state IN {marks(states)}", texts(states))
        return await self._run(op, Mode.READ)

    async def rollbacks(self, limit: int = 200) -> list[RollbackRecord]:
        return await self._run(self._rollbacks("1 = 1", (), NEWEST_FIRST, limit), Mode.READ)

    async def cancel_proposed(self, deployment_id: str, error: str) -> list[RollbackRecord]:
        op = self._cancel("deployment_id = ?", (deployment_id,), error, self.clock())
        return await self._run(op, Mode.WRITE)

    def _cancel(self, where: str, params: Sequence[Any], error: str, now: float) -> Op[list[RollbackRecord]]:
        cancelled = yield from fetch(
            f"UPDATE {self._p}rollbacks SET state = ?, finished_at = ?, error = ?"
            f" WHERE {where} AND state IN {marks(PROPOSED_STATES)} RETURNING id",
            str(RollbackState.CANCELLED),
            now,
            error,
            *params,
            *texts(PROPOSED_STATES),
        )
        ids = [row[0] for row in cancelled]
        if not ids:
            return []
        return (yield from self._rollbacks(f"id IN {marks(ids)}", ids))

    def _rollback(self, rollback_id: str) -> Op[RollbackRecord]:
        [record] = yield from self._rollbacks("id = ?", (rollback_id,))
        return record

    def _rollbacks(
        self, where: str, params: Sequence[Any], order: str = OLDEST_FIRST, limit: int | None = None
    ) -> Op[list[RollbackRecord]]:
        p = self._p
        chosen = f"FROM {p}rollbacks WHERE {where} ORDER BY {order}"
        args = tuple(params)
        if limit is not None:
            chosen += " LIMIT ?"
            args += (limit,)
        found = yield from fetch(f"SELECT {ROLLBACK_COLUMNS} {chosen}", *args)
        if not found:
            return []
        steps = yield from fetch(
            f"SELECT {STEP_COLUMNS} FROM {p}rollback_steps WHERE rollback_id IN (SELECT id {chosen})"
            " ORDER BY rollback_id, position",
            *args,
        )
        return rows.rollbacks(found, steps)
