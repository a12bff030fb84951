"""The state store contract, run on both implementations: SQLite in a file, PostgreSQL on the test bed.

Every test opens its store through ``open_store`` with a URL, as the daemon
does, and steps a hand-held clock; reopening is a restart.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from watchdogd.config.models import ServiceConfig
from watchdogd.errors import StoreError
from watchdogd.pgstore import DEFAULT_SCHEMA, PgStore
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.journal import RollbackState
from watchdogd.rollback.plan import Executor
from watchdogd.store import SCHEMA_VERSION, StateStore, open_store

pytestmark = pytest.mark.integration

SERVICE = ServiceConfig.model_validate({"container": "api", "rollback": {"steps": ["container"]}})


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
    opened: list[StateStore] = field(default_factory=list)

    async def open(self) -> StateStore:
        store = await open_store(self.url, clock=self.clock)
        self.opened.append(store)
        return store

    async def schema_versions(self) -> list[int]:
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                return [int(r[0]) for r in db.execute("SELECT version FROM schema_version")]
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(f"SELECT version FROM {DEFAULT_SCHEMA}.schema_version")
        finally:
            await conn.close()
        return [int(r["version"]) for r in rows]

    async def set_schema_version(self, version: int) -> None:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                db.execute("UPDATE schema_version SET version = ?", (version,))
                db.commit()
            finally:
                db.close()
            return
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(f"UPDATE {DEFAULT_SCHEMA}.schema_version SET version = $1", version)
        finally:
            await conn.close()


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
async def store(backend: Backend) -> StateStore:
    return await backend.open()


def target(deployment: str = "d1") -> RollbackTarget:
    return RollbackTarget("api", deployment, SERVICE, fired_rules=("error-rate",), reason="error rate high")


# --- rollbacks ----------------------------------------------------------------------------------


async def test_create_get_and_for_deployment(store: StateStore, backend: Backend) -> None:
    record = await store.create(
        "d1",
        "api",
        ["container", "sql", "verify"],
        [{"rule": "error-rate", "value": 0.2}],
        {"service": "api", "migrations": [{"id": "m1"}]},
        state="awaiting_approval",
        execute_at=backend.clock.now + 60,
    )
    assert record.deployment_id == "d1" and record.service == "api"
    assert record.state == "awaiting_approval" and not record.final
    assert record.reasons == [{"rule": "error-rate", "value": 0.2}]
    assert record.target == {"service": "api", "migrations": [{"id": "m1"}]}
    assert record.proposed_at == backend.clock.now
    assert record.execute_at == backend.clock.now + 60
    assert (record.started_at, record.finished_at, record.error) == (None, None, None)
    assert [(s.position, s.name, s.state, s.attempts) for s in record.steps] == [
        (0, "container", "pending", 0),
        (1, "sql", "pending", 0),
        (2, "verify", "pending", 0),
    ]
    assert await store.get(record.id) == record
    assert await store.for_deployment("d1") == record
    assert await store.get("nope") is None
    assert await store.for_deployment("d2") is None


async def test_one_rollback_per_deployment(store: StateStore) -> None:
    first = await store.create("d1", "api", ["container"], [{"rule": "error-rate"}], {})
    again = await store.create("d1", "api", ["container", "sql"], [{"rule": "p99"}], {"other": True})
    assert again == first
    racing = await asyncio.gather(*(store.create("d2", "api", ["container"], [], {}) for _ in range(5)))
    assert len({r.id for r in racing}) == 1
    assert len(racing[0].steps) == 1


async def test_add_reason_appends(store: StateStore) -> None:
    record = await store.create("d1", "api", ["container"], [{"rule": "error-rate"}], {})
    await store.add_reason(record.id, {"rule": "p99", "value": 1.5})
    await store.add_reason("unknown", {"rule": "ignored"})
    found = await store.get(record.id)
    assert found is not None
    assert found.reasons == [{"rule": "error-rate"}, {"rule": "p99", "value": 1.5}]


async def test_veto_and_execution_race_has_one_winner(store: StateStore) -> None:
    for n in range(10):
        record = await store.create(f"d{n}", "api", ["container"], [], {})
        vetoed, executing = await asyncio.gather(
            store.transition(record.id, "vetoed", ("pending", "awaiting_approval")),
            store.transition(record.id, "executing", ("pending", "awaiting_approval")),
        )
        assert vetoed != executing
        final = await store.get(record.id)
        assert final is not None
        assert final.state == ("vetoed" if vetoed else "executing")


async def test_transition_stamps_times_and_error(store: StateStore, backend: Backend) -> None:
    record = await store.create("d1", "api", ["container"], [], {})
    assert not await store.transition(record.id, "succeeded", ("executing",))
    backend.clock.now += 5
    assert await store.transition(record.id, "executing", ("pending",))
    backend.clock.now += 5
    assert await store.transition(record.id, "executing", ("executing",))  # a resume keeps started_at
    backend.clock.now += 5
    assert await store.transition(record.id, "failed", ("executing",), error="step container failed: boom")
    done = await store.get(record.id)
    assert done is not None
    assert done.state == "failed" and done.final
    assert done.started_at == record.proposed_at + 5
    assert done.finished_at == record.proposed_at + 15
    assert done.error == "step container failed: boom"


async def test_step_attempts_are_counted(store: StateStore, backend: Backend) -> None:
    record = await store.create("d1", "api", ["container", "sql"], [], {})
    first_start = backend.clock.now
    await store.step_started(record.id, 1)
    await store.step_finished(record.id, 1, "failed", "lock timeout", "lock timeout")
    backend.clock.now += 10
    await store.step_started(record.id, 1)
    running = await store.get(record.id)
    assert running is not None
    step = running.steps[1]
    assert (step.state, step.attempts, step.started_at, step.error) == ("running", 2, first_start, None)
    await store.step_finished(record.id, 1, "done", "migration m1 reverted")
    done = await store.get(record.id)
    assert done is not None
    step = done.steps[1]
    assert (step.state, step.attempts, step.detail, step.error) == ("done", 2, "migration m1 reverted", None)
    assert step.finished_at == backend.clock.now
    assert done.steps[0].state == "pending" and done.steps[0].attempts == 0


async def test_unfinished_and_in_states(store: StateStore, backend: Backend) -> None:
    ids: list[str] = []
    states: tuple[RollbackState, ...] = ("awaiting_approval", "pending", "pending", "succeeded")
    for n, state in enumerate(states):
        backend.clock.now += 1
        ids.append((await store.create(f"d{n}", "api", ["container"], [], {}, state=state)).id)
    assert await store.transition(ids[2], "executing", ("pending",))
    assert [r.id for r in await store.unfinished()] == [ids[2]]
    waiting = await store.in_states(("pending", "awaiting_approval"))
    assert [r.id for r in waiting] == [ids[0], ids[1]]
    assert all(len(r.steps) == 1 for r in waiting)
    assert await store.in_states(("vetoed",)) == []


# --- deployments --------------------------------------------------------------------------------


async def test_deployments_supersede_and_change_state(store: StateStore, backend: Backend) -> None:
    t0 = backend.clock.now
    first = await store.add_deployment("api", "app:v2", "app:v1", t0, 600, {"current": {"id": "c2"}})
    assert (first.state, first.open, first.window_ends_at, first.finished_at) == (
        "watching",
        True,
        t0 + 600,
        None,
    )
    assert first.data == {"current": {"id": "c2"}}
    other = await store.add_deployment("worker", "w:v2", None, t0 + 1, 60, {})
    second = await store.add_deployment("api", "app:v3", "app:v2", t0 + 2, 600, {})
    superseded = await store.deployment(first.id)
    assert superseded is not None
    assert (superseded.state, superseded.finished_at) == ("promoted", t0 + 2)
    assert [d.id for d in await store.deployments()] == [second.id, other.id, first.id]
    assert [d.id for d in await store.deployments(limit=1)] == [second.id]
    assert {d.id for d in await store.deployments(open_only=True)} == {second.id, other.id}

    await store.update_deployment(second.id, {"migrations": ["m1"]})
    backend.clock.now = t0 + 100
    assert await store.set_deployment_state(second.id, "rolling_back", ("watching",))
    assert not await store.set_deployment_state(second.id, "promoted", ("watching",))
    rolling = await store.deployment(second.id)
    assert rolling is not None
    assert (rolling.state, rolling.finished_at, rolling.data) == (
        "rolling_back",
        None,
        {"migrations": ["m1"]},
    )
    backend.clock.now = t0 + 200
    assert await store.set_deployment_state(second.id, "rolled_back", ("rolling_back",))
    rolled = await store.deployment(second.id)
    assert rolled is not None and not rolled.open
    assert (rolled.state, rolled.finished_at) == ("rolled_back", t0 + 200)
    assert await store.deployment("nope") is None


async def test_rule_states_round_trip(store: StateStore) -> None:
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


async def test_mutes_keep_the_later_end(store: StateStore) -> None:
    assert await store.muted_until("api", "error-rate") is None
    await store.mute("api", "error-rate", 2000.0)
    await store.mute("api", "error-rate", 1500.0)
    assert await store.muted_until("api", "error-rate") == 2000.0
    await store.mute("api", "error-rate", 2500.5)
    assert await store.muted_until("api", "error-rate") == 2500.5
    assert await store.muted_until("api", "p99") is None


async def test_audit_with_filters(store: StateStore, backend: Backend) -> None:
    t0 = backend.clock.now
    await store.audit("system", "proposed", {"rules": ["error-rate"]}, "d1", "r1")
    backend.clock.now += 10
    await store.audit("alice", "veto", {"why": "known blip", "ids": {1}}, "d1", "r1")
    backend.clock.now += 10
    await store.audit("system", "deployed", {}, "d2")
    entries = await store.audit_entries()
    assert [(e.actor, e.action, e.at) for e in entries] == [
        ("system", "proposed", t0),
        ("alice", "veto", t0 + 10),
        ("system", "deployed", t0 + 20),
    ]
    assert entries[0].seq < entries[1].seq < entries[2].seq
    assert (entries[0].deployment_id, entries[0].rollback_id) == ("d1", "r1")
    assert entries[1].detail == {"why": "known blip", "ids": "{1}"}
    assert entries[2].rollback_id is None
    assert [e.action for e in await store.audit_entries(deployment_id="d1")] == ["proposed", "veto"]
    assert [e.action for e in await store.audit_entries(actor="system")] == ["proposed", "deployed"]
    assert [e.action for e in await store.audit_entries(since=t0 + 10)] == ["veto", "deployed"]
    assert [e.action for e in await store.audit_entries("d1", "system", t0)] == ["proposed"]
    assert [e.action for e in await store.audit_entries(limit=1)] == ["proposed"]


# --- schema and restarts ------------------------------------------------------------------------


async def test_reopening_is_a_no_op_and_keeps_the_data(store: StateStore, backend: Backend) -> None:
    deployment = await store.add_deployment("api", "app:v2", "app:v1", backend.clock.now, 600, {"k": 1})
    record = await store.create(deployment.id, "api", ["container", "sql"], [{"rule": "error-rate"}], {})
    assert await store.transition(record.id, "executing", ("pending",))
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
    assert unfinished.id == record.id and unfinished.steps[0].state == "running"
    assert await again.deployment(deployment.id) == deployment
    assert await reopened.rule_states(deployment.id) == {"error-rate": {"state": "firing"}}
    assert await reopened.muted_until("api", "p99") == 5000.0
    assert [e.action for e in await reopened.audit_entries()] == ["proposed"]


async def test_a_newer_schema_is_refused(store: StateStore, backend: Backend) -> None:
    await store.aclose()
    await backend.set_schema_version(SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this watchdogd"):
        await backend.open()


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


async def test_executor_runs_and_resumes_a_plan(store: StateStore, backend: Backend) -> None:
    ran: list[str] = []
    steps = {n: Recorder(n, ran) for n in ("container", "sql", "verify")}
    record = await store.create("d1", "api", ["container", "sql", "verify"], [], {})
    done = await Executor(store, steps).execute(record, target())
    assert ran == ["container", "sql", "verify"]
    assert done.state == "succeeded" and [s.state for s in done.steps] == ["done", "done", "done"]

    # A plan interrupted in its second step, picked up by a restarted process.
    interrupted = await store.create("d2", "api", ["container", "sql", "verify"], [], {})
    assert await store.transition(interrupted.id, "executing", ("pending",))
    await store.step_started(interrupted.id, 0)
    await store.step_finished(interrupted.id, 0, "done", "container ok")
    await store.step_started(interrupted.id, 1)
    await store.aclose()
    reopened = await backend.open()
    [unfinished] = await reopened.unfinished()
    ran.clear()
    steps["verify"] = Recorder("verify", ran, StepResult("failed", "health probe fails"))
    resumed = await Executor(reopened, steps).execute(unfinished, target("d2"))
    assert ran == ["sql", "verify"]
    assert resumed.state == "failed" and resumed.error == "step verify failed: health probe fails"
    assert [s.attempts for s in resumed.steps] == [1, 2, 1]


# --- opening --------------------------------------------------------------------------------------


async def test_unknown_scheme_is_refused_without_its_password() -> None:
    with pytest.raises(StoreError, match="use sqlite:///PATH or postgresql://") as caught:
        await open_store("mysql://app:s3cret-pw@db/state")
    assert "s3cret-pw" not in str(caught.value)


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
    stores = await asyncio.gather(*(PgStore.open(pg_dsn) for _ in range(4)))
    try:
        await stores[0].add_deployment("api", None, None, 1.0, 60, {})
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
