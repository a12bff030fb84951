"""The state store contract, run on both implementations: SQLite in a file, PostgreSQL on the test bed.

Every test opens its store through ``open_store`` with a URL, as the daemon
does, and steps a hand-held clock; reopening is a restart.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from watchdogd.config.models import ServiceConfig
from watchdogd.errors import StoreError
from watchdogd.model import (
    ContainerSnapshot,
    DeploymentFacts,
    DeploymentState,
    Migration,
    Reason,
    RollbackRecord,
    RollbackState,
    StepState,
)
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.plan import Executor
from watchdogd.store import SCHEMA_VERSION, Store, open_store
from watchdogd.store.postgres import DEFAULT_SCHEMA, PgStore
from watchdogd.store.schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

pytestmark = pytest.mark.integration

SERVICE = ServiceConfig.model_validate({"container": "api", "rollback": {"steps": ["container"]}})
PENDING, AWAITING, EXECUTING = (
    RollbackState.PENDING,
    RollbackState.AWAITING_APPROVAL,
    RollbackState.EXECUTING,
)
PROPOSED = (PENDING, AWAITING)


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """One implementation under test: how to open it, and how to reach past it into its tables."""

    kind: str
    url: str
    clock: Clock = field(default_factory=Clock)
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        store = await open_store(self.url, clock=self.clock)
        self.opened.append(store)
        return store

    async def sql(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
        """Run ``?``-style statements past the store, in its schema; the rows of each."""
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                found = [db.execute(text, tuple(params)).fetchall() for text, params in statements]
                db.commit()
            finally:
                db.close()
            return found
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(
                f"CREATE SCHEMA IF NOT EXISTS {DEFAULT_SCHEMA}; SET search_path = {DEFAULT_SCHEMA}"
            )
            results = []
            for text, params in statements:
                parts = text.split("?")
                numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))
                results.append([tuple(r) for r in await conn.fetch(numbered, *params)])
            return results
        finally:
            await conn.close()

    async def schema_versions(self) -> list[int]:
        [found] = await self.sql([("SELECT version FROM schema_version", ())])
        return [int(version) for (version,) in found]

    async def set_schema_version(self, version: int) -> None:
        await self.sql([("UPDATE schema_version SET version = ?", (version,))])

    async def write_v1(self, rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """A store as version 1 left it (the DDL of today's version 1), holding ``rows``."""
        ddl = (
            SQLITE_MIGRATIONS[1] if self.kind == "sqlite" else POSTGRES_MIGRATIONS[1].format(s=DEFAULT_SCHEMA)
        )
        statements = [(s, ()) for s in ddl.split(";") if s.strip()]
        statements += [
            ("CREATE TABLE schema_version (version integer NOT NULL)", ()),
            ("INSERT INTO schema_version VALUES (1)", ()),
        ]
        await self.sql([*statements, *rows])


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = await pg_database()
    made = Backend(request.param, url)
    yield made
    for store in made.opened:
        await store.aclose()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


def target(deployment: str = "d1") -> RollbackTarget:
    return RollbackTarget("api", deployment, SERVICE, fired_rules=("error-rate",), reason="error rate high")


def fired(rule: str | None = "error-rate", at: float = 1.0, value: float | None = 0.2) -> Reason:
    if rule is None:
        return Reason(at, "rolling back by hand", operator="alice")
    return Reason(at, f"{rule} {value} > 0.05", rule=rule, value=value, values=(value,), threshold=0.05)


async def propose(
    store: Store,
    deployment: str = "d1",
    reason: Reason | None = None,
    *,
    steps: Sequence[str] = ("container",),
    state: RollbackState = PENDING,
    execute_at: float | None = None,
    target: dict[str, Any] | None = None,
) -> tuple[RollbackRecord, bool]:
    return await store.propose(deployment, "api", steps, reason or fired(), target or {}, state, execute_at)


# --- rollbacks ----------------------------------------------------------------------------------


async def test_propose_get_and_for_deployment(store: Store, backend: Backend) -> None:
    reason = fired(value=math.inf)
    record, created = await store.propose(
        "d1",
        "api",
        ["container", "sql", "verify"],
        reason,
        {"service": "api", "migrations": [{"id": "m1"}]},
        AWAITING,
        backend.clock.now + 60,
    )
    assert created
    assert record.deployment_id == "d1" and record.service == "api"
    assert record.state is AWAITING and record.proposed and not record.final
    assert record.reasons == (reason,) and record.rules == {"error-rate"}
    assert record.target == {"service": "api", "migrations": [{"id": "m1"}]}
    assert record.proposed_at == backend.clock.now
    assert record.execute_at == backend.clock.now + 60
    assert (record.started_at, record.finished_at, record.error) == (None, None, None)
    assert [(s.position, s.name, s.state, s.attempts) for s in record.steps] == [
        (0, "container", StepState.PENDING, 0),
        (1, "sql", StepState.PENDING, 0),
        (2, "verify", StepState.PENDING, 0),
    ]
    assert await store.get(record.id) == record
    assert await store.for_deployment("d1") == [record]
    assert await store.latest_for("d1") == record
    assert await store.get("nope") is None
    assert await store.for_deployment("d2") == []
    assert await store.latest_for("d2") is None


async def test_propose_joins_the_open_proposal(store: Store, backend: Backend) -> None:
    now = backend.clock.now
    first, created = await propose(store, reason=fired("error-rate"), execute_at=now + 300)
    assert created
    again, created = await propose(
        store, reason=fired("p99", value=1.5), steps=("container", "sql"), execute_at=now + 30
    )
    assert not created and again.id == first.id
    assert [r.rule for r in again.reasons] == ["error-rate", "p99"]
    assert again.execute_at == now + 30  # the shortest grace wins
    assert len(again.steps) == 1  # the plan is the first proposal's

    same_rule, _ = await propose(store, reason=fired("error-rate", at=9.0), execute_at=now + 600)
    assert [r.rule for r in same_rule.reasons] == ["error-rate", "p99"]
    assert same_rule.execute_at == now + 30
    by_hand, _ = await propose(store, reason=fired(None), execute_at=None)
    assert [r.label.split(":")[0] for r in by_hand.reasons] == ["error-rate", "p99", "alice"]
    assert by_hand.execute_at == now + 30
    assert await store.for_deployment("d1") == [by_hand]


async def test_a_proposal_waiting_for_approval_keeps_no_due_time(store: Store) -> None:
    first, _ = await propose(store, state=AWAITING, execute_at=None)
    joined, created = await propose(store, reason=fired("p99"), execute_at=5.0)
    assert not created and joined.id == first.id
    assert joined.state is AWAITING and joined.execute_at is None


async def test_racing_proposals_make_one_with_every_reason(store: Store) -> None:
    results = await asyncio.gather(
        propose(store, "d1", fired("error-rate"), execute_at=100.0),
        propose(store, "d1", fired("p99"), execute_at=50.0),
    )
    assert sorted(created for _, created in results) == [False, True]
    [record] = await store.for_deployment("d1")
    assert record.rules == {"error-rate", "p99"}
    assert record.execute_at == 50.0
    assert len(record.steps) == 1

    many = await asyncio.gather(*(propose(store, "d2", fired(f"rule-{n}")) for n in range(6)))
    assert sum(created for _, created in many) == 1
    [record] = await store.for_deployment("d2")
    assert record.rules == {f"rule-{n}" for n in range(6)}
    assert len(record.steps) == 1


async def test_a_vetoed_proposal_is_not_joined(store: Store, backend: Backend) -> None:
    vetoed, _ = await propose(store, reason=fired("error-rate"))
    assert await store.transition(vetoed.id, RollbackState.VETOED, PROPOSED)
    backend.clock.now += 1
    fresh, created = await propose(store, reason=fired("p99"))
    assert created and fresh.id != vetoed.id
    assert fresh.rules == {"p99"}
    assert [r.id for r in await store.for_deployment("d1")] == [vetoed.id, fresh.id]
    assert (await store.latest_for("d1")) == fresh
    assert [r.id for r in await store.rollbacks()] == [fresh.id, vetoed.id]


async def test_proposals_at_one_instant_still_sort(store: Store) -> None:
    vetoed, _ = await propose(store)
    assert await store.transition(vetoed.id, RollbackState.VETOED, PROPOSED)
    fresh, _ = await propose(store, reason=fired("p99"))
    latest = await store.latest_for("d1")
    assert latest is not None and latest.id == fresh.id
    assert [r.id for r in await store.for_deployment("d1")] == [vetoed.id, fresh.id]


async def test_an_executing_rollback_is_not_joined(store: Store) -> None:
    record, _ = await propose(store)
    assert await store.transition(record.id, EXECUTING, PROPOSED)
    again, created = await propose(store, reason=fired("p99"), execute_at=1.0)
    assert not created and again.id == record.id
    assert again.state is EXECUTING and again.rules == {"error-rate"}


async def test_update_target_only_from_the_states_given(store: Store) -> None:
    record, _ = await propose(store, target={"service": "api"})
    assert await store.update_target(record.id, {"service": "api", "dry_run": True}, PROPOSED)
    found = await store.get(record.id)
    assert found is not None and found.dry_run
    assert await store.transition(record.id, EXECUTING, PROPOSED)
    assert not await store.update_target(record.id, {}, PROPOSED)
    found = await store.get(record.id)
    assert found is not None and found.target == {"service": "api", "dry_run": True}


async def test_veto_and_execution_race_has_one_winner(store: Store) -> None:
    for n in range(10):
        record, _ = await propose(store, f"d{n}")
        vetoed, executing = await asyncio.gather(
            store.transition(record.id, RollbackState.VETOED, PROPOSED),
            store.transition(record.id, EXECUTING, PROPOSED),
        )
        assert vetoed != executing
        final = await store.get(record.id)
        assert final is not None
        assert final.state is (RollbackState.VETOED if vetoed else EXECUTING)


async def test_transition_stamps_times_and_error(store: Store, backend: Backend) -> None:
    record, _ = await propose(store)
    assert not await store.transition(record.id, RollbackState.SUCCEEDED, (EXECUTING,))
    backend.clock.now += 5
    assert await store.transition(record.id, EXECUTING, (PENDING,))
    backend.clock.now += 5
    assert await store.transition(record.id, EXECUTING, (EXECUTING,))  # a resume keeps started_at
    backend.clock.now += 5
    failed = RollbackState.FAILED
    assert await store.transition(record.id, failed, (EXECUTING,), error="step container failed: boom")
    done = await store.get(record.id)
    assert done is not None
    assert done.state is failed and done.final
    assert done.started_at == record.proposed_at + 5
    assert done.finished_at == record.proposed_at + 15
    assert done.error == "step container failed: boom"


async def test_a_retry_reopens_a_failed_rollback(store: Store, backend: Backend) -> None:
    record, _ = await propose(store)
    assert await store.transition(record.id, EXECUTING, (PENDING,))
    backend.clock.now += 5
    assert await store.transition(record.id, RollbackState.FAILED, (EXECUTING,), error="boom")
    backend.clock.now += 60
    assert await store.transition(record.id, EXECUTING, (RollbackState.FAILED,))
    retried = await store.get(record.id)
    assert retried is not None
    assert retried.state is EXECUTING and not retried.final
    assert (retried.started_at, retried.finished_at, retried.error) == (record.proposed_at, None, None)
    assert [r.id for r in await store.unfinished()] == [record.id]

    # a failed one whose deployment has another open proposal is not reopened
    backend.clock.now += 1
    assert await store.transition(record.id, RollbackState.FAILED, (EXECUTING,), error="again")
    _, created = await propose(store, reason=fired("p99"))
    assert created
    assert not await store.transition(record.id, EXECUTING, (RollbackState.FAILED,))
    still = await store.get(record.id)
    assert still is not None and still.state is RollbackState.FAILED and still.error == "again"


async def test_cancel_proposed(store: Store, backend: Backend) -> None:
    pending, _ = await propose(store, "d1")
    executing, _ = await propose(store, "d2")
    assert await store.transition(executing.id, EXECUTING, PROPOSED)
    backend.clock.now += 3
    [cancelled] = await store.cancel_proposed("d1", "service removed from the config")
    assert cancelled.id == pending.id
    assert cancelled.state is RollbackState.CANCELLED and cancelled.final
    assert (cancelled.finished_at, cancelled.error) == (backend.clock.now, "service removed from the config")
    assert await store.cancel_proposed("d1", "again") == []
    assert await store.cancel_proposed("d2", "no") == []
    assert (await store.get(executing.id)) == (await store.unfinished())[0]


async def test_step_attempts_are_counted(store: Store, backend: Backend) -> None:
    record, _ = await propose(store, steps=("container", "sql"))
    first_start = backend.clock.now
    await store.step_started(record.id, 1)
    await store.step_finished(record.id, 1, StepState.FAILED, "lock timeout", "lock timeout")
    backend.clock.now += 10
    await store.step_started(record.id, 1)
    running = await store.get(record.id)
    assert running is not None
    step = running.steps[1]
    assert (step.state, step.attempts, step.started_at, step.error) == (
        StepState.RUNNING,
        2,
        first_start,
        None,
    )
    await store.step_finished(record.id, 1, StepState.DONE, "migration m1 reverted")
    done = await store.get(record.id)
    assert done is not None
    step = done.steps[1]
    assert (step.state, step.attempts, step.detail, step.error) == (
        StepState.DONE,
        2,
        "migration m1 reverted",
        None,
    )
    assert step.finished_at == backend.clock.now
    assert done.steps[0].state is StepState.PENDING and done.steps[0].attempts == 0


async def test_unfinished_in_states_and_rollbacks(store: Store, backend: Backend) -> None:
    ids: list[str] = []
    for n, state in enumerate((AWAITING, PENDING, PENDING, RollbackState.DRY_RUN)):
        backend.clock.now += 1
        ids.append((await propose(store, f"d{n}", state=state))[0].id)
    assert await store.transition(ids[2], EXECUTING, (PENDING,))
    assert [r.id for r in await store.unfinished()] == [ids[2]]
    waiting = await store.in_states(PROPOSED)
    assert [r.id for r in waiting] == [ids[0], ids[1]]
    assert all(len(r.steps) == 1 for r in waiting)
    assert await store.in_states((RollbackState.VETOED,)) == []
    assert await store.in_states(()) == []
    assert [r.id for r in await store.rollbacks()] == ids[::-1]
    assert [r.id for r in await store.rollbacks(limit=2)] == ids[:1:-1]
    assert all(len(r.steps) == 1 for r in await store.rollbacks(limit=2))


# --- deployments --------------------------------------------------------------------------------

FACTS = DeploymentFacts(
    origin="docker+api",
    previous=ContainerSnapshot("api", "app:v1", "sha256:1", {"env": ["A=1"]}),
    current=ContainerSnapshot("api", "app:v2", "sha256:2", {"env": ["A=2"]}),
    migrations=(Migration("m1", "DROP TABLE products_v2", ("SELECT true",)),),
    sql_policy="approve",
)


async def test_a_new_deployment_supersedes_and_cancels(store: Store, backend: Backend) -> None:
    t0 = backend.clock.now
    first, superseded = await store.add_deployment("api", "app:v2", "app:v1", t0, 600, FACTS)
    assert superseded == []
    assert (first.state, first.open, first.window_ends_at, first.finished_at) == (
        DeploymentState.WATCHING,
        True,
        t0 + 600,
        None,
    )
    assert first.facts == FACTS
    other, _ = await store.add_deployment("worker", "w:v2", None, t0 + 1, 60, DeploymentFacts())
    proposal, _ = await propose(store, first.id)
    backend.clock.now = t0 + 5
    second, superseded = await store.add_deployment("api", "app:v3", "app:v2", t0 + 2, 600, DeploymentFacts())
    assert [(d.id, d.state, d.finished_at, d.open) for d in superseded] == [
        (first.id, DeploymentState.SUPERSEDED, t0 + 2, False)
    ]
    assert await store.deployment(first.id) == superseded[0]
    cancelled = await store.get(proposal.id)
    assert cancelled is not None
    assert cancelled.state is RollbackState.CANCELLED
    assert (cancelled.error, cancelled.finished_at) == (f"superseded by deployment {second.id}", t0 + 5)
    assert (await store.get(proposal.id)) == (await store.latest_for(first.id))
    assert [d.id for d in await store.deployments()] == [second.id, other.id, first.id]
    assert [d.id for d in await store.deployments(limit=1)] == [second.id]
    assert {d.id for d in await store.deployments(open_only=True)} == {second.id, other.id}
    # one service's: its newest first, however many others came since
    assert [d.id for d in await store.deployments(service="api")] == [second.id, first.id]
    assert [d.id for d in await store.deployments(limit=1, service="worker")] == [other.id]
    assert [d.id for d in await store.deployments(open_only=True, service="api")] == [second.id]
    assert await store.deployments(service="nobody") == []
    # only watching ones are superseded: one rolling back goes on
    assert await store.set_deployment_state(
        second.id, DeploymentState.ROLLING_BACK, (DeploymentState.WATCHING,)
    )
    _, superseded = await store.add_deployment("api", "app:v4", "app:v3", t0 + 3, 600, DeploymentFacts())
    assert superseded == []


async def test_an_idempotency_key_answers_the_same_deployment(store: Store, backend: Backend) -> None:
    t0 = backend.clock.now
    first, _ = await store.add_deployment("api", "app:v2", "app:v1", t0, 600, FACTS, idempotency_key="k-1")
    again, superseded = await store.add_deployment(
        "api", "app:v9", "app:v2", t0 + 5, 60, DeploymentFacts(), idempotency_key="k-1"
    )
    assert (again, superseded) == (first, [])
    assert [d.id for d in await store.deployments()] == [first.id]
    assert await store.deployment_for_key("k-1") == first
    assert await store.deployment_for_key("k-2") is None
    racing = await asyncio.gather(
        *(
            store.add_deployment("web", "web:v2", None, t0 + 10, 60, DeploymentFacts(), idempotency_key="k-2")
            for _ in range(4)
        )
    )
    assert len({d.id for d, _ in racing}) == 1
    assert all(superseded == [] for _, superseded in racing)
    # no key: no deduplication; keys are unique but may be absent on many
    unkeyed, _ = await store.add_deployment("api", "app:v3", None, t0 + 20, 60, DeploymentFacts())
    assert await store.deployment(unkeyed.id) == unkeyed


async def test_deployment_state_and_facts(store: Store, backend: Backend) -> None:
    t0 = backend.clock.now
    deployment, _ = await store.add_deployment("api", "app:v2", "app:v1", t0, 600, DeploymentFacts())
    await store.update_facts(deployment.id, FACTS)
    backend.clock.now = t0 + 100
    watching, rolling_back = DeploymentState.WATCHING, DeploymentState.ROLLING_BACK
    assert await store.set_deployment_state(deployment.id, rolling_back, (watching,))
    assert not await store.set_deployment_state(deployment.id, DeploymentState.PROMOTED, (watching,))
    assert not await store.set_deployment_state(deployment.id, DeploymentState.PROMOTED, ())
    rolling = await store.deployment(deployment.id)
    assert rolling is not None
    assert (rolling.state, rolling.finished_at, rolling.facts) == (rolling_back, None, FACTS)
    backend.clock.now = t0 + 200
    failed = DeploymentState.ROLLBACK_FAILED
    assert await store.set_deployment_state(deployment.id, failed, (rolling_back,))
    ended = await store.deployment(deployment.id)
    assert ended is not None and not ended.open
    assert (ended.state, ended.finished_at) == (failed, t0 + 200)
    # a retried rollback opens the deployment again
    assert await store.set_deployment_state(deployment.id, rolling_back, (failed,))
    retried = await store.deployment(deployment.id)
    assert retried is not None and retried.open and retried.finished_at is None
    backend.clock.now = t0 + 300
    assert await store.set_deployment_state(deployment.id, DeploymentState.ROLLED_BACK, (rolling_back,))
    rolled = await store.deployment(deployment.id)
    assert rolled is not None and (rolled.state, rolled.finished_at) == (
        DeploymentState.ROLLED_BACK,
        t0 + 300,
    )
    assert await store.deployment("nope") is None


# --- rule states, mutes, audit ------------------------------------------------------------------


async def test_rule_states_round_trip(store: Store) -> None:
    state = {
        "state": "pending",
        "since": 1_700_000_000.25,
        "value": math.inf,
        "threshold": 0.05,
        "failed_values": [0.2, 0.3],
        "reason": "error rate 20% > 5%",
        "last_match": None,
    }
    await store.save_rule_state("d1", "error-rate", state)
    await store.save_rule_state("d1", "p99", {"state": "inactive"})
    await store.save_rule_state("d2", "error-rate", {"state": "firing"})
    await store.save_rule_state("d1", "p99", {"state": "firing"})
    assert await store.rule_states("d1") == {"error-rate": state, "p99": {"state": "firing"}}
    assert await store.rule_states("d3") == {}


async def test_a_round_of_rule_states_is_saved_in_one_call(store: Store) -> None:
    await store.save_rule_state("d1", "p99", {"state": "ok"})
    round_ = [(f"d{n % 3}", f"r{n}", {"state": "firing", "n": n}) for n in range(300)]
    await store.save_rule_states([*round_, ("d1", "p99", {"state": "pending"})])
    saved = await store.rule_states("d1")
    assert saved["p99"] == {"state": "pending"}  # an existing state is replaced
    assert len(saved) == 101 and saved["r298"] == {"state": "firing", "n": 298}
    await store.save_rule_states([])  # nothing to save is no error


async def test_mutes_keep_the_later_end(store: Store) -> None:
    assert await store.muted_until("api", "error-rate") is None
    await store.mute("api", "error-rate", 2000.0)
    await store.mute("api", "error-rate", 1500.0)
    assert await store.muted_until("api", "error-rate") == 2000.0
    await store.mute("api", "error-rate", 2500.5)
    assert await store.muted_until("api", "error-rate") == 2500.5
    assert await store.muted_until("api", "p99") is None


async def test_a_mute_until_the_rule_clears(store: Store, backend: Backend) -> None:
    await store.mute("api", "error-rate", math.inf)
    await store.mute("api", "error-rate", 5000.0)  # a shorter one does not end it
    await store.mute("api", "p99", 3000.0)
    assert await store.muted_until("api", "error-rate") == math.inf
    assert await store.mutes() == {("api", "error-rate"): math.inf, ("api", "p99"): 3000.0}
    reopened = await backend.open()
    assert await reopened.muted_until("api", "error-rate") == math.inf

    assert not await store.unmute("api", "p99", until_clear_only=True)  # a timed one stays
    assert await store.unmute("api", "error-rate", until_clear_only=True)
    assert await store.mutes() == {("api", "p99"): 3000.0}
    assert await store.unmute("api", "p99")
    assert not await store.unmute("api", "p99")
    assert await store.mutes() == {}


async def test_audit_with_filters(store: Store, backend: Backend) -> None:
    t0 = backend.clock.now
    await store.audit("system", "proposed", {"rules": ["error-rate"]}, "d1", "r1")
    backend.clock.now += 10
    await store.audit("alice", "veto", {"why": "known blip", "ids": {1}}, "d1", "r1")
    backend.clock.now += 10
    await store.audit("system", "deployed", {}, "d2")
    entries = await store.audit_entries()  # newest first
    assert [(e.actor, e.action, e.at) for e in entries] == [
        ("system", "deployed", t0 + 20),
        ("alice", "veto", t0 + 10),
        ("system", "proposed", t0),
    ]
    assert entries[0].seq > entries[1].seq > entries[2].seq
    assert (entries[2].deployment_id, entries[2].rollback_id) == ("d1", "r1")
    assert entries[1].detail == {"why": "known blip", "ids": "{1}"}
    assert entries[0].rollback_id is None
    assert [e.action for e in await store.audit_entries(deployment_id="d1")] == ["veto", "proposed"]
    assert [e.action for e in await store.audit_entries(actor="system")] == ["deployed", "proposed"]
    assert [e.action for e in await store.audit_entries(since=t0 + 10)] == ["deployed", "veto"]
    assert [e.action for e in await store.audit_entries("d1", "system", t0)] == ["proposed"]
    assert [e.action for e in await store.audit_entries(limit=1)] == ["deployed"]
    # a cursor: the page after an entry is the entries below its seq
    assert [e.action for e in await store.audit_entries(limit=1, before=entries[0].seq)] == ["veto"]
    older = await store.audit_entries(actor="system", before=entries[0].seq)
    assert [e.action for e in older] == ["proposed"]
    assert await store.audit_entries(before=entries[2].seq) == []


# --- schema and restarts ------------------------------------------------------------------------


async def test_reopening_is_a_no_op_and_keeps_the_data(store: Store, backend: Backend) -> None:
    deployment, _ = await store.add_deployment("api", "app:v2", "app:v1", backend.clock.now, 600, FACTS)
    record, _ = await propose(store, deployment.id, steps=("container", "sql"))
    assert await store.transition(record.id, EXECUTING, (PENDING,))
    await store.step_started(record.id, 0)
    await store.save_rule_state(deployment.id, "error-rate", {"state": "firing"})
    await store.mute("api", "p99", 5000.0)
    await store.audit("system", "proposed", {}, deployment.id, record.id)
    await store.aclose()
    assert await backend.schema_versions() == [SCHEMA_VERSION]

    reopened = await backend.open()
    again = await backend.open()
    assert await backend.schema_versions() == [SCHEMA_VERSION]
    [unfinished] = await reopened.unfinished()
    assert unfinished.id == record.id and unfinished.steps[0].state is StepState.RUNNING
    assert await again.deployment(deployment.id) == deployment
    assert await reopened.rule_states(deployment.id) == {"error-rate": {"state": "firing"}}
    assert await reopened.muted_until("api", "p99") == 5000.0
    assert [e.action for e in await reopened.audit_entries()] == ["proposed"]


async def test_a_newer_schema_is_refused(store: Store, backend: Backend) -> None:
    await store.aclose()
    await backend.set_schema_version(SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this watchdogd"):
        await backend.open()


V1_REASONS = [
    {"rule": "error-rate", "reason": "0.2 > 0.05 for 5m", "value": 0.2, "threshold": 0.05, "at": 10.0}
]
V1_DATA = {
    "origin": "api",
    "previous": {"name": "api", "image": "app:v1", "image_id": "sha256:1", "config": {"env": []}},
    "migrations": [{"id": "m1", "down_sql": "DROP TABLE t", "verify": ["SELECT true"]}],
}


def v1_rows() -> list[tuple[str, Sequence[Any]]]:
    """What version 1 held: a watching deployment rolling back, its executing rollback, a vetoed one."""
    deployment = (
        "INSERT INTO deployments (id, service, image, previous_image, state, started_at, window_ends_at,"
        " finished_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    rollback = (
        "INSERT INTO rollbacks (id, deployment_id, service, state, reasons, target, proposed_at, execute_at,"
        " started_at, finished_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    step = (
        "INSERT INTO rollback_steps (rollback_id, position, name, state, attempts, started_at, finished_at,"
        " error, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    reasons = json.dumps(V1_REASONS)
    return [
        (
            deployment,
            ("dep1", "api", "app:v2", "app:v1", "rolling_back", 1.0, 601.0, None, json.dumps(V1_DATA)),
        ),
        (deployment, ("dep0", "api", "app:v1", None, "promoted", 0.5, 60.5, 1.0, "{}")),
        (rollback, ("rb1", "dep1", "api", "executing", reasons, "{}", 10.0, 70.0, 70.0, None, None)),
        (rollback, ("rb0", "dep0", "api", "vetoed", "[]", "{}", 0.6, 60.6, None, 0.7, None)),
        (step, ("rb1", 0, "container", "done", 1, 70.0, 71.0, None, "container ok")),
        (step, ("rb1", 1, "sql", "running", 1, 71.0, None, None, None)),
    ]


async def test_a_version_1_store_is_upgraded_with_its_rows(backend: Backend) -> None:
    await backend.write_v1(v1_rows())
    store = await backend.open()
    assert await backend.schema_versions() == [SCHEMA_VERSION]

    deployment = await store.deployment("dep1")
    assert deployment is not None
    assert deployment.state is DeploymentState.ROLLING_BACK and deployment.window_ends_at == 601.0
    assert deployment.facts == DeploymentFacts.from_json(V1_DATA)
    assert deployment.facts.migrations == (Migration("m1", "DROP TABLE t", ("SELECT true",)),)
    [resumed] = await store.unfinished()
    assert (resumed.id, resumed.deployment_id, resumed.state, resumed.execute_at) == (
        "rb1",
        "dep1",
        EXECUTING,
        70.0,
    )
    assert resumed.reasons == (
        Reason(10.0, "0.2 > 0.05 for 5m", rule="error-rate", value=0.2, threshold=0.05),
    )
    assert [(s.name, s.state, s.attempts) for s in resumed.steps] == [
        ("container", StepState.DONE, 1),
        ("sql", StepState.RUNNING, 1),
    ]
    # version 2: a deployment whose proposal was vetoed may have another; keys are kept
    fresh, created = await propose(store, "dep0")
    assert created
    assert [r.id for r in await store.for_deployment("dep0")] == ["rb0", fresh.id]
    _, created = await propose(store, "dep1")
    assert not created
    added, superseded = await store.add_deployment("api", "app:v3", None, 2.0, 60, FACTS, idempotency_key="k")
    assert superseded == [] and await store.deployment_for_key("k") == added


async def test_a_journal_file_without_versions_is_adopted(tmp_path: Path) -> None:
    """Files written by the rollback journal alone: its tables, no ``schema_version``."""
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    rollbacks_ddl = SQLITE_MIGRATIONS[1].split("CREATE TABLE IF NOT EXISTS deployments")[0]
    db.executescript(rollbacks_ddl)
    for statement, params in v1_rows()[2:]:
        db.execute(statement, params)
    db.commit()
    db.close()
    store = await open_store(f"sqlite:///{path}")
    try:
        [resumed] = await store.unfinished()
        assert resumed.id == "rb1" and len(resumed.steps) == 2
        assert await store.deployments() == []
    finally:
        await store.aclose()


# --- the executor on each store -----------------------------------------------------------------


class Recorder:
    """A step that records that it ran and answers what the test says."""

    def __init__(self, name: str, ran: list[str], result: StepResult | None = None) -> None:
        self.name = name
        self.ran = ran
        self.result = result or StepResult("done", f"{name} ok")

    async def run(self, target: RollbackTarget) -> StepResult:
        self.ran.append(self.name)
        return self.result

    async def describe(self, target: RollbackTarget) -> list[str]:
        return [f"would {self.name}"]


async def test_executor_runs_and_resumes_a_plan(store: Store, backend: Backend) -> None:
    ran: list[str] = []
    steps = {n: Recorder(n, ran) for n in ("container", "sql", "verify")}
    plan = ("container", "sql", "verify")
    record, _ = await propose(store, "d1", steps=plan)
    done = await Executor(store, steps).execute(record, target())
    assert ran == ["container", "sql", "verify"]
    assert done.state is RollbackState.SUCCEEDED
    assert [s.state for s in done.steps] == [StepState.DONE] * 3

    # A plan interrupted in its second step, picked up by a restarted process.
    interrupted, _ = await propose(store, "d2", steps=plan)
    assert await store.transition(interrupted.id, EXECUTING, (PENDING,))
    await store.step_started(interrupted.id, 0)
    await store.step_finished(interrupted.id, 0, StepState.DONE, "container ok")
    await store.step_started(interrupted.id, 1)
    await store.aclose()
    reopened = await backend.open()
    [unfinished] = await reopened.unfinished()
    ran.clear()
    steps["verify"] = Recorder("verify", ran, StepResult("failed", "health probe fails"))
    resumed = await Executor(reopened, steps).execute(unfinished, target("d2"))
    assert ran == ["sql", "verify"]
    assert resumed.state is RollbackState.FAILED and resumed.error == "step verify failed: health probe fails"
    assert [s.attempts for s in resumed.steps] == [1, 2, 1]

    # An operator's retry: from the journal, the done steps are not run again.
    ran.clear()
    steps["verify"] = Recorder("verify", ran)
    assert await reopened.transition(resumed.id, EXECUTING, (RollbackState.FAILED,))
    retried = await reopened.get(resumed.id)
    assert retried is not None
    finished = await Executor(reopened, steps).execute(retried, target("d2"))
    assert ran == ["verify"]
    assert finished.state is RollbackState.SUCCEEDED and finished.error is None


# --- opening --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:"])
async def test_a_store_in_memory(url: str) -> None:
    store = await open_store(url)
    try:
        await store.mute("api", "p99", 10.0)
        assert await store.mutes() == {("api", "p99"): 10.0}
    finally:
        await store.aclose()


async def test_a_relative_and_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = await open_store("sqlite:///state/relative.db")
    absolute = await open_store(f"sqlite:///{tmp_path}/absolute.db")
    await relative.aclose()
    await absolute.aclose()
    assert (tmp_path / "state" / "relative.db").exists() and (tmp_path / "absolute.db").exists()


async def test_unknown_scheme_is_refused_without_its_password() -> None:
    with pytest.raises(StoreError, match="use sqlite:///PATH or postgresql://") as caught:
        await open_store("mysql://app:s3cret-pw@db/state")
    assert "s3cret-pw" not in str(caught.value)


async def test_unwritable_sqlite_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="state store"):
        await open_store(f"sqlite:///{blocker}/state.db")


async def test_unreachable_postgres_is_a_clear_error_without_its_password() -> None:
    with pytest.raises(
        StoreError, match=r"state store postgresql://app:\*\*\*@127.0.0.1:1/state: cannot connect"
    ):
        await open_store("postgresql://app:s3cret-pw@127.0.0.1:1/state")


async def test_missing_database_is_a_clear_error(pg_dsn: str) -> None:
    missing = pg_dsn.rsplit("/", 1)[0] + "/wdtest_does_not_exist"
    with pytest.raises(StoreError, match=r"cannot connect: .*does not exist"):
        await open_store(missing)


async def test_replicas_opening_together_both_get_the_schema(pg_dsn: str) -> None:
    stores = await asyncio.gather(*(open_store(pg_dsn) for _ in range(4)))
    try:
        await stores[0].add_deployment("api", None, None, 1.0, 60, DeploymentFacts())
        assert len(await stores[3].deployments()) == 1
    finally:
        for opened in stores:
            await opened.aclose()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {DEFAULT_SCHEMA}.schema_version") == 1
    finally:
        await conn.close()


async def test_a_schema_of_its_own(pg_dsn: str) -> None:
    first = await PgStore.open(pg_dsn, schema="wd_blue")
    second = await PgStore.open(pg_dsn, schema="wd_green")
    try:
        await first.mute("api", "p99", 10.0)
        assert await second.muted_until("api", "p99") is None
        assert await first.muted_until("api", "p99") == 10.0
    finally:
        await first.aclose()
        await second.aclose()
