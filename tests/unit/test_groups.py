"""Service groups in memory: one proposal for the group, one veto window, one decision; member plans
in order; a failure stops the group and says which members are back; every member frozen after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from watchdogd.config.loader import load_config_text
from watchdogd.daemon import Daemon
from watchdogd.decisions import Policy, group_policy
from watchdogd.errors import ConfigError, Conflict
from watchdogd.model import Deployment, DeploymentState, RollbackRecord, RollbackState
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
defaults: {interval: 1s, grace: 60s, window: 1h, freeze_after_rollback: 30m}
sources:
  a: {type: http, url: "http://127.0.0.1:1/a"}
  w: {type: http, url: "http://127.0.0.1:1/w"}
services:
  api:
    container: api
    images: [api]
    rollback: {steps: [container]}
    rules:
      - {name: errors, source: a, field: up, condition: "> 0.5", action: rollback}
  worker:
    container: worker
    images: [worker]
    grace: 120s
    rollback: {steps: [container]}
    rules:
      - {name: errors, source: w, field: up, condition: "> 0.5", action: rollback}
  db:
    database: {dsn: "postgresql://app@127.0.0.1:1/app"}
    rollback: {steps: [sql]}
  alone:
    container: alone
    images: [alone]
    rollback: {steps: [container]}
groups:
  shop: {services: [db, api, worker], order: [api, worker, db]}
"""


@dataclass
class Bed:
    daemon: Daemon
    clock: FakeClock
    sources: FakeSources
    steps: dict[str, RecordingStep]
    recorded: RecordingReporter

    async def deploy(self, service: str, image: str = "v2") -> Deployment:
        deployment, _ = await self.daemon.deployments.register(
            Registration(service, f"{service}:{image}", f"{service}:v1"), "ci"
        )
        return deployment

    async def feed(self, source: str, value: float) -> None:
        self.sources[source].set(value)
        await self.daemon.poll(source)

    async def open_rollbacks(self) -> list[RollbackRecord]:
        return [r for r in await self.daemon.store.rollbacks() if r.proposed]

    async def state(self, deployment: Deployment) -> DeploymentState:
        found = await self.daemon.store.deployment(deployment.id)
        assert found is not None
        return found.state

    def ran(self) -> list[str]:
        runs = [(t.rollback_id, t.service, name) for name, s in self.steps.items() for t in s.runs]
        return [f"{service}/{name}" for _, service, name in runs]


async def make(text: str = CONFIG) -> Bed:
    clock = FakeClock()
    sources = FakeSources()
    order: list[str] = []
    steps = {name: RecordingStep(name) for name in ("sql", "container")}

    for step in steps.values():  # one list in the order the steps ran, across members
        original = step.run

        async def run(target, _original=original, _name=step.name):  # type: ignore[no-untyped-def]
            order.append(f"{target.service}/{_name}")
            return await _original(target)

        step.run = run  # type: ignore[method-assign]
    daemon = await Daemon.open(
        config_of(text),
        store=await memory_store(clock),
        clock=clock,
        make_source=sources,
        polling=False,
        steps=steps,
        docker=NoDocker(),
        tick=0.02,
    )
    bed = Bed(daemon, clock, sources, steps, RecordingReporter().attach(daemon.report))
    bed.ran = lambda: list(order)  # type: ignore[method-assign]
    return bed


@pytest.fixture
async def bed() -> AsyncIterator[Bed]:
    made = await make()
    yield made
    await made.daemon.close(2)


def _second_container_run_fails(bed: Bed) -> None:
    """The first container run (api) passes, the second (worker) fails; db's sql never runs."""
    original = bed.steps["container"].run
    calls = 0

    async def second_fails(target):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            bed.steps["container"].fail = ["image worker:v1 is gone"]
        return await original(target)

    bed.steps["container"].run = second_fails  # type: ignore[method-assign]


async def _final(bed: Bed, rollback_id: str) -> RollbackRecord:
    async def ended() -> RollbackRecord | None:
        store = bed.daemon.store
        record = await store.get(rollback_id)
        if record is None or not record.final:
            return None
        # the record ends first, then the deployments it undid leave rolling_back
        open_ones = await store.deployments(open_only=True)
        return None if any(d.state is DeploymentState.ROLLING_BACK for d in open_ones) else record

    return await wait_until(ended, what="the group's rollback to end")  # type: ignore[no-any-return]


async def test_one_members_rule_makes_one_proposal_for_the_group_and_its_steps_run_in_order(bed: Bed) -> None:
    api, worker, db = await bed.deploy("api"), await bed.deploy("worker"), await bed.deploy("db")
    await bed.feed("a", 1.0)
    [record] = await bed.open_rollbacks()
    assert record.deployment_id == api.id
    assert [s.name for s in record.steps] == ["api/container", "worker/container", "db/sql"]
    # one veto window for the group: the longest member grace (worker's 120s)
    assert record.execute_at == bed.clock() + 120
    # the other member's rule joins the same proposal, named with its service
    await bed.feed("w", 1.0)
    [joined] = await bed.open_rollbacks()
    assert joined.id == record.id
    assert [(r.service, r.rule) for r in joined.reasons] == [("api", "errors"), ("worker", "errors")]
    # a member's window ending while the group's proposal is open does not promote it
    await bed.clock.advance(119)
    await settle()
    assert await bed.state(worker) is DeploymentState.WATCHING
    await bed.clock.advance(2)
    done = await _final(bed, record.id)
    assert done.state is RollbackState.SUCCEEDED
    assert bed.ran() == ["api/container", "worker/container", "db/sql"]
    # each step ran on its own member's deployment
    assert [t.deployment_id for t in bed.steps["container"].runs] == [api.id, worker.id]
    assert [t.deployment_id for t in bed.steps["sql"].runs] == [db.id]
    for deployment in (api, worker, db):
        await wait_until(
            lambda d=deployment: _is(bed, d, DeploymentState.ROLLED_BACK), what=f"{deployment.service} back"
        )
    # every member frozen; a service outside the group is not
    await wait_until(lambda: len(bed.recorded.of("frozen")) == 3, what="three freezes")
    assert sorted(f.service for f in await bed.daemon.store.freezes()) == ["api", "db", "worker"]
    [succeeded] = bed.recorded.of("rollback_succeeded")
    assert "group shop (api, worker, db)" in succeeded.summary


async def _is(bed: Bed, deployment: Deployment, state: DeploymentState) -> bool:
    return await bed.state(deployment) is state


async def test_a_veto_of_the_groups_proposal_ends_it_for_every_member_and_mutes_each_members_rules(
    bed: Bed,
) -> None:
    api, worker = await bed.deploy("api"), await bed.deploy("worker")
    await bed.deploy("db")
    await bed.feed("w", 1.0)
    await bed.feed("a", 1.0)
    [record] = await bed.open_rollbacks()
    assert record.deployment_id == worker.id
    await bed.daemon.operators.veto(record.id, "alice", "known noisy canary", None)
    assert await bed.daemon.store.muted_until("api", "errors") is not None
    assert await bed.daemon.store.muted_until("worker", "errors") is not None
    # an operator's rollback of another member while it was open would have joined it; now it is vetoed
    await bed.clock.advance(300)
    await settle()
    assert bed.ran() == []
    assert await bed.state(api) is DeploymentState.WATCHING
    # still firing, muted: no new proposal
    await bed.feed("a", 1.0)
    assert await bed.open_rollbacks() == []


async def test_an_operators_rollback_of_a_member_joins_the_open_group_proposal_and_approval_applies_to_all(
    bed: Bed,
) -> None:
    api, worker, db = await bed.deploy("api"), await bed.deploy("worker"), await bed.deploy("db")
    await bed.feed("a", 1.0)
    [record] = await bed.open_rollbacks()
    again = await bed.daemon.operators.manual_rollback(db.id, "alice", "schema broke reports")
    assert again.id == record.id
    with pytest.raises(Conflict):
        await bed.daemon.operators.promote(worker.id, "alice")
    await bed.daemon.operators.approve(record.id, "alice")
    done = await _final(bed, record.id)
    assert done.state is RollbackState.SUCCEEDED
    assert bed.ran() == ["api/container", "worker/container", "db/sql"]
    assert await bed.state(api) is DeploymentState.ROLLED_BACK


async def test_a_failure_stops_the_group_and_says_which_members_are_back(bed: Bed) -> None:
    api, worker, db = await bed.deploy("api"), await bed.deploy("worker"), await bed.deploy("db")
    _second_container_run_fails(bed)
    record = await bed.daemon.operators.manual_rollback(api.id, "alice", "bad release")
    await bed.daemon.operators.approve(record.id, "alice")
    done = await _final(bed, record.id)
    assert done.state is RollbackState.FAILED
    assert bed.ran() == ["api/container", "worker/container"]  # db's step never ran
    assert await bed.state(api) is DeploymentState.ROLLED_BACK
    assert await bed.state(worker) is DeploymentState.ROLLBACK_FAILED
    assert await bed.state(db) is DeploymentState.ROLLBACK_FAILED
    [failed] = bed.recorded.of("rollback_failed")
    assert "back: api" in failed.summary
    assert "worker (step container failed: image worker:v1 is gone)" in failed.summary
    assert "db (not started: the group stopped at worker)" in failed.summary
    members = failed.detail["group"]["members"]
    assert [(m["service"], m["state"]) for m in members] == [
        ("api", "back"),
        ("worker", "not_back"),
        ("db", "not_back"),
    ]
    # a failed group rollback freezes every member too
    await wait_until(lambda: len(bed.recorded.of("frozen")) == 3, what="three freezes")
    # retried, it goes on from the failed member; the member already back is not rolled back again
    await bed.daemon.operators.retry(record.id, "alice")
    again = await _final(bed, record.id)
    assert again.state is RollbackState.SUCCEEDED
    assert bed.ran() == ["api/container", "worker/container", "worker/container", "db/sql"]
    for deployment in (api, worker, db):
        await wait_until(lambda d=deployment: _is(bed, d, DeploymentState.ROLLED_BACK), what="all back")


async def test_a_member_without_an_open_deployment_is_skipped_with_the_reason(bed: Bed) -> None:
    api = await bed.deploy("api")
    db = await bed.deploy("db")
    await bed.daemon.operators.promote(db.id, "alice")
    await bed.feed("a", 1.0)
    [record] = await bed.open_rollbacks()
    assert [s.name for s in record.steps] == ["api/container"]
    members = {m["service"]: m for m in record.target["group"]["members"]}
    assert members["worker"]["skipped"] == "no deployment registered: nothing to roll back"
    assert members["db"]["skipped"].startswith(f"no open deployment (its newest, {db.id}, is promoted")
    proposed = bed.recorded.of("proposed")[0]
    assert set(proposed.detail["group"]["skipped"]) == {"worker", "db"}
    await bed.daemon.operators.approve(record.id, "alice")
    done = await _final(bed, record.id)
    assert done.state is RollbackState.SUCCEEDED
    assert await bed.state(db) is DeploymentState.PROMOTED  # untouched
    assert await bed.state(api) is DeploymentState.ROLLED_BACK


async def test_a_members_deployment_older_than_the_fleets_latest_hundreds_still_joins_the_group(
    bed: Bed,
) -> None:
    # a fleet: hundreds of deploys of other services since the worker's and the db's
    worker, db = await bed.deploy("worker"), await bed.deploy("db")
    for n in range(510):
        bed.clock.now += 1
        await bed.deploy("alone", f"v{n}")
    await bed.deploy("api")
    await bed.feed("a", 1.0)
    [record] = await bed.open_rollbacks()
    assert [s.name for s in record.steps] == ["api/container", "worker/container", "db/sql"]
    members = {m["service"]: m for m in record.target["group"]["members"]}
    assert members["worker"]["deployment_id"] == worker.id and not members["worker"].get("skipped")
    assert members["db"]["deployment_id"] == db.id and not members["db"].get("skipped")


async def test_a_service_outside_any_group_is_rolled_back_alone(bed: Bed) -> None:
    alone = await bed.deploy("alone")
    await bed.deploy("api")
    record = await bed.daemon.operators.manual_rollback(alone.id, "alice", "bad")
    assert [s.name for s in record.steps] == ["container"]
    assert "group" not in record.target


def test_group_policy_is_as_careful_as_its_most_careful_member() -> None:
    auto = Policy("auto", 60.0)
    manual = Policy("manual", 30.0, approval_timeout=600.0, on_approval_timeout="execute")
    assert group_policy([auto, Policy("auto", 120.0)]) == Policy("auto", 120.0)
    assert group_policy([auto, manual]).mode == "manual"
    assert group_policy([auto, manual]).approval_timeout == 600.0
    assert group_policy([auto, manual]).on_approval_timeout == "cancel"  # auto's default is cancel
    assert group_policy([manual, Policy("dry-run")]).mode == "dry-run"


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ("g: {services: [api, nope]}", "watchdogd.yaml:28: groups.g.services[1]: no service 'nope'"),
        ("g: {services: [api, db]}\n  h: {services: [db, worker]}", "'db' is already in group 'g'"),
        ("g: {services: [api, db], order: [api]}", "groups.g.order: must list every service"),
        ("g: {services: [api, db], order: [api, db, worker]}", "not in services: worker"),
        ("g: {services: [api]}", "groups.g.services"),
    ],
)
def test_bad_groups_are_config_errors_with_their_line(groups: str, message: str) -> None:
    text = CONFIG.split("groups:")[0] + "groups:\n  " + groups + "\n"
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, "watchdogd.yaml")
    said = str(raised.value)
    assert message in said, said
    assert "watchdogd.yaml:" in said


async def test_a_group_rollback_that_ended_just_before_a_crash_is_finished_by_the_next_leader(
    bed: Bed,
) -> None:
    api, worker, db = await bed.deploy("api"), await bed.deploy("worker"), await bed.deploy("db")
    store = bed.daemon.store
    set_state = store.set_deployment_state
    calls = 0

    async def dies_after_the_first_member(deployment_id, state, allowed_from):  # type: ignore[no-untyped-def]
        nonlocal calls
        if state is not DeploymentState.ROLLING_BACK:
            calls += 1
            if calls > 1:
                raise RuntimeError("power lost")  # api is marked back; worker and db not yet
        return await set_state(deployment_id, state, allowed_from)

    store.set_deployment_state = dies_after_the_first_member  # type: ignore[method-assign]
    _second_container_run_fails(bed)
    record = await bed.daemon.operators.manual_rollback(api.id, "alice", "bad release")
    await bed.daemon.operators.approve(record.id, "alice")

    async def ended() -> bool:
        found = await store.get(record.id)
        return found is not None and found.final and calls > 1

    await wait_until(ended, what="the group's rollback to end, then the process to die")
    assert await bed.state(worker) is DeploymentState.ROLLING_BACK
    store.set_deployment_state = set_state  # type: ignore[method-assign]

    await bed.daemon.leadership.lead()  # what the next process, or replica, does first

    assert await bed.state(api) is DeploymentState.ROLLED_BACK
    assert await bed.state(worker) is DeploymentState.ROLLBACK_FAILED
    assert await bed.state(db) is DeploymentState.ROLLBACK_FAILED
    [failed] = bed.recorded.of("rollback_failed")
    assert failed.rollback_id == record.id and "back: api" in failed.summary
    assert bed.ran() == ["api/container", "worker/container"]  # nothing ran again
