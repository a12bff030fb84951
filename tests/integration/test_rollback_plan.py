"""Rollback plans: the journal, the executor's order and stops, and the small steps on real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from watchdogd.config.models import (
    RedisPurgeConfig,
    ServiceConfig,
    VerifyStepConfig,
    WebhookStepConfig,
)
from watchdogd.config.types import SecretUrl
from watchdogd.model import Reason, RollbackRecord, RollbackState, StepState
from watchdogd.rollback.base import RollbackTarget, StepResult
from watchdogd.rollback.plan import Executor, target_from_json, target_to_json
from watchdogd.rollback.redis_purge import RedisPurgeStep
from watchdogd.rollback.steps import VerifyStep, WebhookStep
from watchdogd.store import Store, open_store
from watchdogd.telemetry import Metrics

pytestmark = pytest.mark.integration

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]
SERVICE = ServiceConfig.model_validate({"container": "api", "rollback": {"steps": ["container"]}})


def target(deployment: str = "d1") -> RollbackTarget:
    return RollbackTarget(
        "api", deployment, SERVICE, fired_rules=("error-rate",), reason="error rate 20% > 5%"
    )


class Recorder:
    """A step that records its runs and answers what the test says."""

    def __init__(self, name: str, log: list[str], result: StepResult | None = None) -> None:
        self.name = name
        self.log = log
        self.result = result or StepResult("done", f"{name} ok")

    async def run(self, target: RollbackTarget) -> StepResult:
        self.log.append(self.name)
        return self.result

    async def describe(self, target: RollbackTarget) -> list[str]:
        return [f"would {self.name}"]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    await store.aclose()


async def plan(
    journal: Store, steps: Sequence[str], target: dict[str, Any] | None = None, deployment: str = "d1"
) -> RollbackRecord:
    reason = Reason(0.0, "error rate high", rule="error-rate")
    record, _ = await journal.propose(
        deployment, "api", steps, reason, target or {}, RollbackState.PENDING, None
    )
    return record


async def test_plan_runs_in_order_and_is_journaled(journal: Store) -> None:
    ran: list[str] = []
    steps = {n: Recorder(n, ran) for n in ("container", "sql", "verify")}
    metrics = Metrics(CollectorRegistry())
    record = await plan(journal, ["container", "sql", "verify"])
    assert record.state is RollbackState.PENDING
    done = await Executor(journal, steps, metrics).execute(record, target())
    assert ran == ["container", "sql", "verify"]
    assert done.state is RollbackState.SUCCEEDED
    assert [s.state for s in done.steps] == [StepState.DONE] * 3
    assert all(s.started_at and s.finished_at for s in done.steps)
    assert done.started_at is not None and done.finished_at is not None
    assert (
        metrics.registry.get_sample_value(
            "watchdogd_rollbacks_total", {"service": "api", "outcome": "succeeded"}
        )
        == 1
    )


async def test_failed_step_stops_the_plan_and_says_why(journal: Store) -> None:
    ran: list[str] = []
    steps = {
        "container": Recorder("container", ran),
        "sql": Recorder("sql", ran, StepResult("failed", "lock timeout (55P03) on products")),
        "verify": Recorder("verify", ran),
    }
    record = await plan(journal, ["container", "sql", "verify"])
    done = await Executor(journal, steps).execute(record, target())
    assert ran == ["container", "sql"]
    assert done.state is RollbackState.FAILED
    assert done.error == "step sql failed: lock timeout (55P03) on products"
    assert [s.state for s in done.steps] == [StepState.DONE, StepState.FAILED, StepState.PENDING]


async def test_resume_skips_done_steps_and_reruns_the_interrupted_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    journal = await open_store(url)
    record = await plan(journal, ["container", "sql", "verify"], target_to_json(target()))
    await journal.transition(record.id, RollbackState.EXECUTING, (RollbackState.PENDING,))
    await journal.step_started(record.id, 0)
    await journal.step_finished(record.id, 0, StepState.DONE, "container ok")
    await journal.step_started(record.id, 1)  # the process died here
    journal.close()

    reopened = await open_store(url)
    [unfinished] = await reopened.unfinished()
    assert unfinished.id == record.id
    ran: list[str] = []
    steps = {n: Recorder(n, ran) for n in ("container", "sql", "verify")}
    resumed = target_from_json(unfinished.target, SERVICE)
    assert resumed == target()
    done = await Executor(reopened, steps).execute(unfinished, resumed)
    assert ran == ["sql", "verify"]
    assert done.state is RollbackState.SUCCEEDED
    assert done.steps[1].attempts == 2
    await reopened.aclose()


async def test_veto_and_execution_race_has_one_winner(journal: Store) -> None:
    record = await plan(journal, ["container"])
    results = await asyncio.gather(
        journal.transition(record.id, RollbackState.VETOED, (RollbackState.PENDING,)),
        journal.transition(record.id, RollbackState.EXECUTING, (RollbackState.PENDING,)),
    )
    assert sorted(results) == [False, True]
    ran: list[str] = []
    final = await journal.get(record.id)
    assert final is not None
    done = await Executor(journal, {"container": Recorder("container", ran)}).execute(final, target())
    assert (ran == []) == (done.state is RollbackState.VETOED)


# --- redis_purge ---------------------------------------------------------------------------


async def test_redis_purge_deletes_the_keys_once(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    wait, active = f"{redis_prefix}bull:import:wait", f"{redis_prefix}bull:import:active"
    await redis_client.rpush(wait, "job-1", "job-2")
    await redis_client.rpush(active, "job-3")
    step = RedisPurgeStep(RedisPurgeConfig(url=SecretUrl(redis_url), keys=(wait, active)))
    first = await step.run(target())
    assert first.status == "done"
    assert await redis_client.exists(wait, active) == 0
    second = await step.run(target())
    assert second.status == "already_done"


async def test_redis_purge_with_redis_down_fails_clearly() -> None:
    step = RedisPurgeStep(RedisPurgeConfig(url=SecretUrl("redis://:pw-123@127.0.0.1:1/0"), keys=("q",)))
    result = await step.run(target())
    assert result.status == "failed"
    assert "redis" in result.detail
    assert "pw-123" not in result.detail


# --- webhook -------------------------------------------------------------------------------


async def test_webhook_posts_the_rollback_and_retries_5xx(fake_server: Server) -> None:
    received: list[tuple[dict[str, object], str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers["Idempotency-Key"]))
        return web.Response(status=503 if len(received) < 3 else 200)

    url = await fake_server(hook)
    step = WebhookStep(WebhookStepConfig(url=SecretUrl(url + "/hook"), timeout="2s", retries=3), backoff=0.05)
    result = await step.run(target())
    assert result.status == "done"
    assert len(received) == 3
    body, key = received[-1]
    assert key == "api:d1"
    assert body["service"] == "api" and body["rules"] == ["error-rate"]


async def test_webhook_that_hangs_times_out_after_bounded_retries(fake_server: Server) -> None:
    calls = 0

    async def hang(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)
        return web.Response()

    url = await fake_server(hang)
    step = WebhookStep(WebhookStepConfig(url=SecretUrl(url), timeout="200ms", retries=2), backoff=0.01)
    result = await asyncio.wait_for(step.run(target()), 5)
    assert result.status == "failed"
    assert "no answer within 0.2s (after 3 attempt(s))" in result.detail
    assert calls == 3


async def test_webhook_refused_is_not_retried(fake_server: Server) -> None:
    calls = 0

    async def refuse(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"error": "bad"}, status=400)

    url = await fake_server(refuse)
    result = await WebhookStep(WebhookStepConfig(url=SecretUrl(url), retries=3), backoff=0.01).run(target())
    assert result.status == "failed" and "HTTP 400" in result.detail
    assert calls == 1


async def test_webhook_does_not_follow_a_redirect(fake_server: Server) -> None:
    calls: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        calls.append(request.headers.get("Idempotency-Key", ""))
        return web.Response()

    other = await fake_server(elsewhere)

    async def redirect(request: web.Request) -> web.Response:
        calls.append("redirect")
        return web.Response(status=307, headers={"Location": other + "/hook"})

    url = await fake_server(redirect)
    result = await WebhookStep(WebhookStepConfig(url=SecretUrl(url), retries=3), backoff=0.01).run(target())
    assert calls == ["redirect"]
    assert result.status == "failed"
    assert f"HTTP 307 redirect to {other}/hook, not followed: configure the final URL" in result.detail


# --- verify --------------------------------------------------------------------------------


async def test_verify_waits_for_health_and_rules() -> None:
    answers = iter([False, False, True])

    async def health(_: RollbackTarget) -> tuple[bool, str]:
        ok = next(answers, True)
        return ok, "200 OK" if ok else "503"

    async def rules(_: RollbackTarget) -> tuple[bool, str]:
        return True, "error-rate ok"

    step = VerifyStep(VerifyStepConfig(timeout="3s"), health, rules, poll=0.05)
    result = await step.run(target())
    assert result.status == "done"
    assert result.detail == "health: 200 OK; rules: error-rate ok"


async def test_verify_fails_at_its_timeout_with_what_it_saw() -> None:
    async def rules(_: RollbackTarget) -> tuple[bool, str]:
        return False, "error-rate still firing (0.2 > 0.05)"

    step = VerifyStep(VerifyStepConfig(timeout="300ms"), None, rules, poll=0.05)
    result = await step.run(target())
    assert result.status == "failed"
    assert result.detail == "not verified within 0.3s: rules: error-rate still firing (0.2 > 0.05)"


async def test_describe_lists_every_step(journal: Store) -> None:
    steps = {"container": Recorder("container", []), "verify": VerifyStep(VerifyStepConfig(), None, None)}
    lines = await Executor(journal, steps).describe(target(), ("container", "sql", "verify"))
    assert lines[0] == "1. container:"
    assert "2. sql: not configured" in lines
    assert json.dumps(lines)
