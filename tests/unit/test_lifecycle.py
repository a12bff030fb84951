"""The life of a deployment and its rollbacks, in memory: propose, veto, mute, merge, approve,
ack, retry, manual rollback, restart, reload, promote, supersede.

No Docker, no PostgreSQL: the daemon is built whole by ``Daemon.open`` with a
fake clock, the in-memory store, fake sources polled by hand and recording steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from watchdogd.daemon import Daemon
from watchdogd.errors import Conflict
from watchdogd.model import (
    Deployment,
    DeploymentFacts,
    DeploymentState,
    Migration,
    RollbackRecord,
    RollbackState,
)
from watchdogd.sources.alertmanager import WebhookPayload
from watchdogd.store import Store, open_store
from watchdogd.testing import (
    FakeClock,
    FakeSources,
    NoDocker,
    RecordingReporter,
    RecordingStep,
    config_of,
    memory_store,
    settle,
    wait_until,
)
from watchdogd.watch.deployments import Registration

CONFIG = """
defaults: {interval: 1s, grace: 60s, window: 1h}
sources:
  a: {type: http, url: "http://127.0.0.1:1/a"}
  b: {type: http, url: "http://127.0.0.1:1/b"}
services:
  api:
    container: api
    images: [app]
    database: {dsn: "postgresql://app@127.0.0.1:1/app"}
    rollback: {steps: [sql, container]}
    rules:
      - {name: errors, source: a, field: up, condition: "> 0.5", action: rollback}
      - {name: latency, source: b, field: up, condition: "> 0.5", action: rollback}
"""
IMMEDIATE = CONFIG.replace(
    '{name: latency, source: b, field: up, condition: "> 0.5", action: rollback}',
    '{name: latency, source: b, field: up, condition: "> 0.5", immediate: true, action: rollback}',
)


@dataclass
class World:
    daemon: Daemon
    clock: FakeClock
    sources: FakeSources
    steps: dict[str, RecordingStep]
    recorded: RecordingReporter

    @property
    def store(self) -> Store:
        return self.daemon.store

    async def deploy(self, image: str = "app:v2", **kw: object) -> Deployment:
        deployment, _ = await self.daemon.deployments.register(
            Registration("api", image, "app:v1", **kw),  # type: ignore[arg-type]
            "ci",
        )
        return deployment

    async def feed(self, source: str, value: float | None) -> None:
        self.sources[source].set(value)
        await self.daemon.poll(source)

    async def rollbacks(self, deployment: Deployment) -> list[RollbackRecord]:
        return await self.store.for_deployment(deployment.id)

    async def only(self, deployment: Deployment) -> RollbackRecord:
        records = await self.rollbacks(deployment)
        assert len(records) == 1, records
        return records[0]


async def make(text: str = CONFIG, store: Store | None = None, clock: FakeClock | None = None) -> World:
    clock = clock or FakeClock()
    sources = FakeSources()
    steps = {name: RecordingStep(name) for name in ("sql", "container")}
    daemon = await Daemon.open(
        config_of(text),
        store=store or await memory_store(clock),
        clock=clock,
        make_source=sources,
        polling=False,
        steps=steps,
        docker=NoDocker(),
        tick=0.02,
    )
    recorded = RecordingReporter().attach(daemon.report)
    return World(daemon, clock, sources, steps, recorded)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    made = await make()
    yield made
    await made.daemon.close(2)


async def state_of(world: World, rollback_id: str) -> RollbackState:
    record = await world.store.get(rollback_id)
    assert record is not None
    return record.state


# --- propose, veto, mute ---------------------------------------------------------------------------


async def test_a_firing_rollback_rule_proposes_and_executes_after_the_grace(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    proposal = await world.only(deployment)
    assert (proposal.state, proposal.execute_at) == (RollbackState.PENDING, world.clock() + 60)
    await world.clock.advance(59)
    assert await state_of(world, proposal.id) is RollbackState.PENDING
    await world.clock.advance(1)
    await wait_until(lambda: world.recorded.of("rollback_succeeded"), what="the rollback")
    assert len(world.steps["container"].runs) == 1
    assert (await world.store.deployment(deployment.id)).state is DeploymentState.ROLLED_BACK  # type: ignore[union-attr]


async def test_a_veto_ends_only_that_proposal_an_uncovered_rule_proposes_at_once(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    first = await world.only(deployment)
    await world.daemon.operators.veto(first.id, "alice", "noisy client", None)
    await world.feed("a", 1.0)  # still firing, muted until it clears
    assert len(await world.rollbacks(deployment)) == 1
    await world.feed("b", 1.0)  # latency was not covered by the veto
    records = await world.rollbacks(deployment)
    assert [r.state for r in records] == [RollbackState.VETOED, RollbackState.PENDING]
    assert records[1].rules == {"latency"}


async def test_a_manual_rollback_after_a_veto_is_a_new_proposal(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    first = await world.only(deployment)
    await world.daemon.operators.veto(first.id, "alice", "noisy", None)
    again = await world.daemon.operators.manual_rollback(deployment.id, "bob", "customers report errors")
    assert again.id != first.id and again.state is RollbackState.PENDING
    await world.clock.advance(60)
    await wait_until(lambda: world.recorded.of("rollback_succeeded"))


async def test_a_rule_muted_until_it_clears_proposes_again_when_it_fires_again(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    first = await world.only(deployment)
    await world.daemon.operators.veto(first.id, "alice", "noisy", None)
    await world.clock.advance(1)
    await world.feed("a", 1.0)
    assert len(await world.rollbacks(deployment)) == 1
    await world.clock.advance(1)
    await world.feed("a", 0.0)  # clears: the mute ends
    await world.clock.advance(1)
    await world.feed("a", 1.0)
    assert [r.state for r in await world.rollbacks(deployment)] == [
        RollbackState.VETOED,
        RollbackState.PENDING,
    ]


async def test_a_rule_still_firing_when_its_mute_ends_proposes_again(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    first = await world.only(deployment)
    await world.daemon.operators.veto(first.id, "alice", "deploying a fix", 30.0)
    await world.clock.advance(29)
    await world.feed("a", 1.0)
    assert len(await world.rollbacks(deployment)) == 1
    await world.clock.advance(2)
    await world.feed("a", 1.0)
    records = await world.rollbacks(deployment)
    assert [r.state for r in records] == [RollbackState.VETOED, RollbackState.PENDING]


async def test_a_veto_after_execution_started_is_refused(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    proposal = await world.only(deployment)
    await world.daemon.operators.approve(proposal.id, "alice")
    with pytest.raises(Conflict):
        await world.daemon.operators.veto(proposal.id, "bob", "too late", None)


# --- merge -------------------------------------------------------------------------------------------


async def test_two_rules_firing_at_once_make_one_proposal() -> None:
    world = await make()
    try:
        deployment = await world.deploy()
        world.sources["a"].set(1.0)
        world.sources["b"].set(1.0)
        await asyncio.gather(world.daemon.poll("a"), world.daemon.poll("b"))
        record = await world.only(deployment)
        assert record.rules == {"errors", "latency"}
        assert len(world.recorded.of("proposed")) == 1
        assert len([r for r in world.recorded.notifications if r.kind == "proposed"]) == 1
        counted = world.daemon.registry.get_sample_value(
            "watchdogd_rollback_proposals_total", {"service": "api", "outcome": "proposed"}
        )
        assert counted == 1
    finally:
        await world.daemon.close(2)


async def test_an_immediate_rule_joining_a_pending_proposal_executes_it_at_once() -> None:
    world = await make(IMMEDIATE)
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)  # 60 s of grace
        await world.clock.advance(5)
        await world.feed("b", 1.0)  # immediate: no grace
        await wait_until(
            lambda: world.recorded.of("rollback_succeeded"), what="the rollback, without the grace"
        )
        record = await world.only(deployment)
        assert record.rules == {"errors", "latency"}
    finally:
        await world.daemon.close(2)


# --- approve, ack, retry, verify -------------------------------------------------------------------


async def test_approve_runs_now_and_ack_is_audited(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    proposal = await world.only(deployment)
    await world.daemon.operators.ack(proposal.id, "alice")
    await world.daemon.operators.approve(proposal.id, "bob")
    await wait_until(lambda: world.recorded.of("rollback_succeeded"))
    actors = {(r.kind, r.actor) for r in world.recorded.reports}
    assert {("ack", "alice"), ("approve", "bob")} <= actors


async def test_a_failed_rollback_is_retried_from_its_journal(world: World) -> None:
    world.steps["container"].fail.append("the engine refused")
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    proposal = await world.only(deployment)
    await world.daemon.operators.approve(proposal.id, "alice")
    await wait_until(lambda: world.recorded.of("rollback_failed"))
    assert await state_of(world, proposal.id) is RollbackState.FAILED
    await world.clock.advance(1)
    await world.feed("a", 0.0)
    await world.daemon.operators.retry(proposal.id, "bob")
    await wait_until(lambda: world.recorded.of("rollback_succeeded"), what="the retried rollback")
    assert len(world.steps["sql"].runs) == 1  # done before the failure: not run again
    assert len(world.steps["container"].runs) == 2
    assert [r.actor for r in world.recorded.of("retry")] == ["bob"]
    assert (await world.store.deployment(deployment.id)).state is DeploymentState.ROLLED_BACK  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        await world.daemon.operators.retry(proposal.id, "bob")


VERIFY = CONFIG.replace(
    "rollback: {steps: [sql, container]}",
    "rollback: {steps: [sql, container, verify], verify: {timeout: 1s}}",
)
CUMULATIVE = VERIFY.replace(
    '{name: errors, source: a, field: up, condition: "> 0.5", action: rollback}',
    '{name: errors, source: a, field: up, condition: "> 0.5", failures: {count: 2}, action: rollback}',
)


async def test_verify_judges_the_condition_of_a_rule_that_stays_firing_by_nature() -> None:
    world = await make(CUMULATIVE)
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)
        await world.clock.advance(1)
        await world.feed("a", 1.0)  # two failures since the deploy: firing for the rest of it
        proposal = await world.only(deployment)
        await world.daemon.operators.approve(proposal.id, "alice")
        await wait_until(lambda: world.steps["container"].runs)
        await world.clock.advance(1)
        await world.feed("a", 0.0)  # healthy again; the cumulative count keeps the rule firing
        live = world.daemon.watched.get("api")
        assert live is not None and live.states["errors"].state == "firing"
        await wait_until(
            lambda: world.recorded.of("rollback_succeeded") or world.recorded.of("rollback_failed")
        )
        assert world.recorded.of("rollback_succeeded"), world.recorded.of("rollback_failed")[0].detail
    finally:
        await world.daemon.close(2)


async def test_verify_names_the_rules_it_could_not_judge() -> None:
    world = await make(VERIFY)
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)
        proposal = await world.only(deployment)
        await world.daemon.operators.approve(proposal.id, "alice")
        await wait_until(lambda: world.recorded.of("rollback_succeeded"), within=6)
        done = await world.store.get(proposal.id)
        assert done is not None
        verify = next(s for s in done.steps if s.name == "verify")
        assert "could not judge errors" in (verify.detail or "")
    finally:
        await world.daemon.close(2)


async def test_verify_fails_while_the_fired_condition_still_holds() -> None:
    world = await make(VERIFY)
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)
        proposal = await world.only(deployment)
        await world.daemon.operators.approve(proposal.id, "alice")
        await wait_until(lambda: world.steps["container"].runs)
        await world.clock.advance(1)
        await world.feed("a", 1.0)  # still bad after the rollback
        await wait_until(lambda: world.recorded.of("rollback_failed"), within=6)
        assert "condition still true: errors" in str(world.recorded.of("rollback_failed")[0].detail["error"])
    finally:
        await world.daemon.close(2)


# --- manual mode, manual rollback ------------------------------------------------------------------

MANUAL = CONFIG.replace(
    "defaults: {interval: 1s, grace: 60s, window: 1h}",
    "defaults: {interval: 1s, grace: 60s, window: 1h, mode: manual, approval_timeout: 30s,"
    " on_approval_timeout: execute}",
)


async def test_a_manual_rollback_follows_the_approval_timeout() -> None:
    world = await make(MANUAL)
    try:
        deployment = await world.deploy()
        record = await world.daemon.operators.manual_rollback(deployment.id, "alice", "blank pages")
        assert (record.state, record.execute_at) == (RollbackState.AWAITING_APPROVAL, world.clock() + 30)
        await world.clock.advance(30)
        await wait_until(lambda: world.recorded.of("rollback_succeeded"), what="execution at the timeout")
    finally:
        await world.daemon.close(2)


async def test_unanswered_manual_proposal_is_cancelled_at_its_timeout() -> None:
    world = await make(MANUAL.replace("on_approval_timeout: execute", "on_approval_timeout: cancel"))
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)
        record = await world.only(deployment)
        await world.clock.advance(30)
        await wait_until(lambda: world.recorded.of("expired"))
        assert await state_of(world, record.id) is RollbackState.CANCELLED
        assert not world.steps["container"].runs
    finally:
        await world.daemon.close(2)


async def test_migrations_posted_after_the_proposal_join_its_plan() -> None:
    world = await make(MANUAL)
    try:
        store, clock = world.store, world.clock
        noticed, _ = await store.add_deployment(
            "api", "app:v2", "app:v1", clock(), 3600, DeploymentFacts(origin="docker")
        )
        await world.daemon.watched.refresh("api")
        await world.feed("a", 1.0)
        proposal = await world.only(noticed)
        migration = Migration("20251227_import", "DROP TABLE IF EXISTS product_images;")
        _, registered = await world.daemon.deployments.register(
            Registration("api", "app:v2", migrations=(migration,)), "ci"
        )
        assert "joined the plan" in registered.notes[0]
        await world.daemon.operators.approve(proposal.id, "alice")
        await wait_until(lambda: world.steps["sql"].runs)
        assert [m.id for m in world.steps["sql"].runs[0].migrations] == ["20251227_import"]
        await wait_until(lambda: world.recorded.of("rollback_succeeded"))
    finally:
        await world.daemon.close(2)


# --- supersede, idempotency, reload, promote, restart --------------------------------------------------


async def test_a_newer_deployment_supersedes_the_open_one_and_cancels_its_proposal(world: World) -> None:
    first = await world.deploy("app:v2")
    await world.feed("a", 1.0)
    proposal = await world.only(first)
    second = await world.deploy("app:v3")
    old = await world.store.deployment(first.id)
    assert old is not None and old.state is DeploymentState.SUPERSEDED
    assert await state_of(world, proposal.id) is RollbackState.CANCELLED
    assert world.recorded.of("superseded") and world.recorded.of("cancelled")
    await world.clock.advance(61)
    await settle()
    assert not world.steps["container"].runs
    assert (await world.store.deployment(second.id)).state is DeploymentState.WATCHING  # type: ignore[union-attr]


async def test_an_idempotency_key_answers_the_same_deployment(world: World) -> None:
    first = await world.deploy("app:v2", idempotency_key="pipeline-42")
    again = await world.deploy("app:v2", idempotency_key="pipeline-42")
    assert again.id == first.id
    assert len(await world.store.deployments()) == 1


TWO = (
    CONFIG
    + """
  web:
    container: web
    rollback: {steps: [container]}
    rules:
      - {name: web-errors, source: b, field: up, condition: "> 0.5", action: rollback}
"""
)


async def test_a_service_removed_by_a_reload_has_its_proposals_cancelled() -> None:
    world = await make(TWO)
    try:
        deployment, _ = await world.daemon.deployments.register(Registration("web", "web:v2"), "ci")
        await world.feed("b", 1.0)
        proposal = (await world.rollbacks(deployment))[0]
        assert await world.daemon.reload(config_of(CONFIG))
        assert await state_of(world, proposal.id) is RollbackState.CANCELLED
        with pytest.raises(Conflict):
            await world.daemon.operators.approve(proposal.id, "alice")
        await world.clock.advance(61)
        await settle()
        assert not world.steps["container"].runs
    finally:
        await world.daemon.close(2)


async def test_the_window_end_promotes_a_verified_deploy_and_flags_a_blind_one(world: World) -> None:
    deployment = await world.deploy()
    await world.feed("a", 0.0)
    await world.feed("b", 0.0)
    await world.clock.advance(3600)
    await wait_until(lambda: world.recorded.of("promoted"))
    assert (await world.store.deployment(deployment.id)).state is DeploymentState.PROMOTED  # type: ignore[union-attr]
    blind = await world.deploy("app:v3")
    await world.feed("a", 0.0)  # latency never had data
    await world.clock.advance(3600)
    await wait_until(lambda: world.recorded.of("unverified"))
    assert (await world.store.deployment(blind.id)).state is DeploymentState.UNVERIFIED  # type: ignore[union-attr]
    assert world.recorded.of("unverified")[0].detail["blind_rules"] == ["latency"]


async def test_a_pending_proposal_survives_a_restart_and_executes_on_time(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    world = await make(store=await open_store(url, clock=clock), clock=clock)
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    proposal = await world.only(deployment)
    await world.daemon.close(2)
    await clock.advance(30)
    again = await make(store=await open_store(url, clock=clock), clock=clock)
    try:
        await clock.advance(29)
        assert await state_of(again, proposal.id) is RollbackState.PENDING
        await clock.advance(1)
        await wait_until(lambda: again.recorded.of("rollback_succeeded"))
    finally:
        await again.daemon.close(2)


# --- pushed alerts, supervision ---------------------------------------------------------------------

ALERTS = """
defaults: {interval: 1s, grace: 60s, window: 1h}
sources:
  am: {type: alertmanager}
services:
  api:
    container: api
    images: [app]
    rollback: {steps: [container]}
    rules:
      - name: paged
        source: am
        alerts: 'alertname="HighErrorRate"'
        condition: ">= 1"
        failures: {count: 3, of: 5}
        action: rollback
"""


async def test_alertmanager_posts_update_the_value_not_the_evaluation_count() -> None:
    clock = FakeClock()
    daemon = await Daemon.open(
        config_of(ALERTS), store=await memory_store(clock), clock=clock, polling=False, docker=NoDocker()
    )
    try:
        await daemon.deployments.register(Registration("api", "app:v2", "app:v1"), "ci")
        payload = WebhookPayload.model_validate_json(
            '{"version": "4", "status": "firing", "receiver": "watchdogd", "groupKey": "{}:{}",'
            ' "alerts": [{"status": "firing", "labels": {"alertname": "HighErrorRate"},'
            ' "startsAt": "2026-11-27T10:00:00Z"}]}'
        )
        for _ in range(3):
            assert daemon.alertmanager(payload) == 1
            await settle()
        labels = {"service": "api", "rule": "paged"}
        assert daemon.registry.get_sample_value("watchdogd_rule_value", labels) == 1.0
        evaluated = sum(
            daemon.registry.get_sample_value("watchdogd_rule_evaluations_total", {**labels, "result": result})
            or 0.0
            for result in ("ok", "pending", "firing", "no_data")
        )
        assert evaluated == 0
        live = daemon.watched.get("api")
        assert live is not None and "paged" not in live.states
    finally:
        await daemon.close(2)


async def test_a_dead_service_task_makes_the_daemon_not_ready(world: World) -> None:
    assert world.daemon.health.ready

    async def broken() -> None:
        raise RuntimeError("lost the engine")

    world.daemon.supervisor.service("docker-events", broken())
    await settle()
    assert not world.daemon.health.ready
    assert "docker-events" in world.daemon.health.problem


# --- rule states across restarts and reloads ------------------------------------------------------------

SLOW = CONFIG.replace(
    '{name: errors, source: a, field: up, condition: "> 0.5", action: rollback}',
    '{name: errors, source: a, field: up, condition: "> 0.5", for: 5m, action: rollback}',
)


async def restart(world: World, url: str, text: str, down_for: float) -> World:
    await world.daemon.close(2)
    await world.clock.advance(down_for)
    return await make(text, store=await open_store(url, clock=world.clock), clock=world.clock)


async def test_time_watchdogd_was_down_does_not_count_toward_for(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    world = await make(SLOW, store=await open_store(url, clock=clock), clock=clock)
    deployment = await world.deploy()
    await world.feed("a", 1.0)
    await clock.advance(30)
    await world.feed("a", 1.0)  # pending, 30s observed
    world = await restart(world, url, SLOW, down_for=600)
    try:
        await world.feed("a", 1.0)
        live = world.daemon.watched.get("api")
        assert live is not None and live.states["errors"].state == "pending"
        assert await world.rollbacks(deployment) == []
        await clock.advance(269)
        await world.feed("a", 1.0)
        assert await world.rollbacks(deployment) == []
        await clock.advance(1)
        await world.feed("a", 1.0)  # 5m observed: 30s before the restart, 4m30s after
        assert len(await world.rollbacks(deployment)) == 1
    finally:
        await world.daemon.close(2)


async def test_the_first_poll_after_a_restart_is_evaluated_though_planned_before_the_states_were_read(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    world = await make(store=await open_store(url, clock=clock), clock=clock)
    deployment = await world.deploy()
    await world.feed("a", 0.0)
    world = await restart(world, url, CONFIG, down_for=5)
    try:
        # a scheduled poll is stamped with its planned time: here 0.2s before the
        # restarted daemon carried its saved states over to the time it read them
        clock.now -= 0.2
        await world.feed("a", 1.0)
        errors = world.recorded.of("rule_error")
        assert errors == [], errors
        live = world.daemon.watched.get("api")
        assert live is not None and live.states["errors"].state == "firing"
        assert len(await world.rollbacks(deployment)) == 1
    finally:
        await world.daemon.close(2)


class PowerLost(Exception):
    """The process died here."""


@pytest.mark.parametrize("fail", [False, True])
async def test_a_rollback_that_ended_just_before_a_crash_leaves_no_deployment_rolling_back(
    tmp_path: Path, fail: bool
) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    world = await make(store=await open_store(url, clock=clock), clock=clock)
    deployment = await world.deploy()
    world.steps["container"].fail = ["image app:v1 is gone"] if fail else []
    store = world.store
    set_state = store.set_deployment_state

    async def dies_before_the_deployment_is_done(deployment_id, state, allowed_from):  # type: ignore[no-untyped-def]
        if state is not DeploymentState.ROLLING_BACK:
            raise PowerLost  # the rollback's record is final; its deployment not yet
        return await set_state(deployment_id, state, allowed_from)

    store.set_deployment_state = dies_before_the_deployment_is_done  # type: ignore[method-assign]
    await world.feed("a", 1.0)
    await world.clock.advance(60)
    await wait_until(lambda: world.steps["container"].runs, what="the container step")
    [record] = await world.rollbacks(deployment)
    await wait_until(lambda: _final_state(store, record.id), what="the rollback's final record")
    store.set_deployment_state = set_state  # type: ignore[method-assign]
    world = await restart(world, url, CONFIG, down_for=5)
    try:
        want = DeploymentState.ROLLBACK_FAILED if fail else DeploymentState.ROLLED_BACK
        found = await world.store.deployment(deployment.id)
        assert found is not None and found.state is want, found
        action = "rollback_failed" if fail else "rollback_succeeded"
        said = [e for e in await world.store.audit_entries(deployment_id=deployment.id) if e.action == action]
        assert [e.rollback_id for e in said] == [record.id]  # said once, by the daemon that finished it
        # the service takes a deploy again: it was refused as "a rollback is executing" for ever
        again = await world.deploy("app:v3")
        assert again.state is DeploymentState.WATCHING
    finally:
        await world.daemon.close(2)


async def _final_state(store: Store, rollback_id: str) -> bool:
    record = await store.get(rollback_id)
    return record is not None and record.final


async def test_a_changed_rule_starts_again_and_a_reworded_one_keeps_its_state(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    world = await make(SLOW, store=await open_store(url, clock=clock), clock=clock)
    await world.deploy()
    world.sources["a"].set(0.7)
    await world.daemon.poll("a")
    reworded = SLOW.replace("for: 5m, action: rollback}", "for: 5m, action: rollback, description: 'errors'}")
    world = await restart(world, url, reworded, down_for=10)
    live = world.daemon.watched.get("api")
    assert live is not None and live.states["errors"].state == "pending"  # kept
    raised = reworded.replace('condition: "> 0.5", for: 5m', 'condition: "> 0.9", for: 5m')
    assert await world.daemon.reload(config_of(raised))
    assert "errors" not in live.states  # a new threshold: from no_data again
    await world.feed("a", 0.7)
    assert live.states["errors"].state == "ok"  # 0.7 is not > 0.9
    world = await restart(world, url, reworded, down_for=10)  # the stored state is the 0.9 rule's
    try:
        live = world.daemon.watched.get("api")
        assert live is not None and "errors" not in live.states
    finally:
        await world.daemon.close(2)


BASELINE = CONFIG.replace(
    '{name: latency, source: b, field: up, condition: "> 0.5", action: rollback}',
    '{name: latency, source: b, field: up, condition: ">", baseline: {before: 10m}, action: rollback}',
)


async def test_a_reload_keeps_unchanged_sources_and_their_history() -> None:
    world = await make(BASELINE)
    try:
        for _ in range(3):  # pre-deploy history for the baseline
            await world.feed("b", 0.2)
            await world.clock.advance(60)
        made = list(world.sources.calls)
        changed = BASELINE.replace('url: "http://127.0.0.1:1/a"', 'url: "http://127.0.0.1:2/a"')
        assert await world.daemon.reload(config_of(changed.replace("window: 1h", "window: 2h")))
        assert world.sources.calls == [*made, "a"]  # only the changed source was made again
        measure = world.daemon.world.runs["api"][1].measure
        assert len(world.daemon.jobs.history("b", measure, 0.0)) == 3
        await world.deploy()
        await world.feed("b", 0.2)
        live = world.daemon.watched.get("api")
        assert live is not None and live.states["latency"].baseline == pytest.approx(0.2)
    finally:
        await world.daemon.close(2)


async def test_an_initial_delay_holds_evaluation_until_the_window_has_passed_the_deploy() -> None:
    delayed = CONFIG.replace("    container: api\n", "    container: api\n    initial_delay: 1m\n", 1)
    world = await make(delayed)
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)  # the query's window still holds the old version
        await world.clock.advance(59)
        await world.feed("a", 1.0)
        assert await world.rollbacks(deployment) == []
        await world.clock.advance(1)
        await world.feed("a", 1.0)
        assert len(await world.rollbacks(deployment)) == 1
    finally:
        await world.daemon.close(2)


# --- blind rules and the window's end ---------------------------------------------------------------


async def test_a_blind_rollback_rule_is_said_once_and_again_when_it_sees() -> None:
    world = await make(CONFIG.replace("window: 1h}", "window: 1h, blind_after: 2m}"))
    try:
        deployment = await world.deploy()
        await world.feed("a", None)
        await world.clock.advance(119)
        await world.feed("a", None)
        assert not world.recorded.of("rule_blind")
        await world.clock.advance(1)
        await world.feed("a", None)
        await world.clock.advance(15)
        await world.feed("a", None)
        blind = world.recorded.of("rule_blind")
        assert len(blind) == 1 and blind[0].detail["rule"] == "errors" and blind[0].spec.notify
        labels = {"service": "api", "rule": "errors"}
        assert world.daemon.registry.get_sample_value("watchdogd_rule_blind", labels) == 1
        await world.clock.advance(15)
        await world.feed("a", 0.0)
        assert world.recorded.of("rule_sees")
        assert world.daemon.registry.get_sample_value("watchdogd_rule_blind", labels) == 0
        assert deployment.id == blind[0].deployment_id
    finally:
        await world.daemon.close(2)


async def test_an_unverified_deploy_holds_until_an_operator_promotes_or_rolls_back() -> None:
    world = await make()
    try:
        first = await world.deploy()
        await world.feed("a", 0.0)  # latency never sees
        await world.clock.advance(3600)
        await wait_until(lambda: world.recorded.of("unverified"))
        assert (
            world.daemon.registry.get_sample_value("watchdogd_deployment_unverified", {"service": "api"}) == 1
        )
        promoted = await world.daemon.operators.promote(first.id, "alice")
        assert promoted.state is DeploymentState.PROMOTED
        assert world.recorded.of("promoted")[0].detail["unverified_rules"] == ["latency"]  # as last saved
        second = await world.deploy("app:v3")
        await world.clock.advance(3600)
        await wait_until(lambda: len(world.recorded.of("unverified")) == 2)
        record = await world.daemon.operators.manual_rollback(
            second.id, "bob", "blind deploy, taking no chances"
        )
        await world.clock.advance(60)
        await wait_until(lambda: world.recorded.of("rollback_succeeded"))
        assert (await world.store.get(record.id)).state is RollbackState.SUCCEEDED  # type: ignore[union-attr]
    finally:
        await world.daemon.close(2)


async def test_on_unverified_rollback_proposes_once_and_a_veto_leaves_it_unverified() -> None:
    world = await make(CONFIG.replace("window: 1h}", "window: 1h, on_unverified: rollback}"))
    try:
        deployment = await world.deploy()
        await world.feed("a", 0.0)
        await world.clock.advance(3600)
        proposal = await wait_until(lambda: world.recorded.of("proposed"))
        assert "the window ended unverified: no data from latency" in str(proposal[0].detail["reasons"])
        record = await world.only(deployment)
        await world.daemon.operators.veto(record.id, "alice", "the source was down, not the app", None)
        await wait_until(lambda: world.recorded.of("unverified"))
        assert len(await world.rollbacks(deployment)) == 1
    finally:
        await world.daemon.close(2)


async def test_on_unverified_promote_keeps_the_old_behaviour_with_the_blind_rules_named() -> None:
    world = await make(CONFIG.replace("window: 1h}", "window: 1h, on_unverified: promote}"))
    try:
        await world.deploy()
        await world.feed("a", 0.0)
        await world.clock.advance(3600)
        promoted = await wait_until(lambda: world.recorded.of("promoted"))
        assert promoted[0].detail["unverified_rules"] == ["latency"]
    finally:
        await world.daemon.close(2)


async def test_a_rule_that_saw_too_little_of_the_window_leaves_it_unverified() -> None:
    world = await make(CONFIG.replace("window: 1h}", "window: 1h, min_data: 50%}"))
    try:
        deployment = await world.deploy()
        for value in (0.0, None, None, None):  # latency had data for a quarter of its evaluations
            await world.feed("a", 0.0)
            await world.feed("b", value)
            await world.clock.advance(60)
        await world.feed("b", 0.0)  # ok at the end, but on two of five evaluations
        await world.clock.advance(3600)
        ended = await wait_until(lambda: world.recorded.of("unverified"))
        assert ended[0].detail["blind_rules"] == ["latency"]
        assert (await world.store.deployment(deployment.id)).state is DeploymentState.UNVERIFIED  # type: ignore[union-attr]
    finally:
        await world.daemon.close(2)
