"""redis_purge on the test bed's Redis: patterns, the Bull and Celery layouts, jobs made after the deploy."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from watchdogd.config.models import RedisPurgeConfig, ServiceConfig
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.redis_purge import RedisPurgeStep

pytestmark = pytest.mark.integration

SERVICE = ServiceConfig.model_validate({"container": "api", "rollback": {"steps": ["redis_purge"]}})
DEPLOYED_AT = 1_700_000_000.0
"""When the deployment under rollback started (seconds); Bull timestamps are in ms."""


def target() -> RollbackTarget:
    return RollbackTarget("api", "d1", SERVICE, reason="error rate")


async def deployed_at(deployment_id: str) -> float | None:
    return DEPLOYED_AT if deployment_id == "d1" else None


def purge(redis_url: str, **config: Any) -> RedisPurgeStep:
    return RedisPurgeStep(RedisPurgeConfig.model_validate({"url": redis_url, **config}), deployed_at)


async def bull_job(client: aioredis.Redis, base: str, job: str, at: float, where: str) -> None:
    await client.hset(f"{base}:{job}", mapping={"name": "import", "data": "{}", "timestamp": int(at * 1000)})
    await client.set(f"{base}:{job}:lock", "worker-1")
    if where in ("wait", "active", "paused"):
        await client.rpush(f"{base}:{where}", job)
    else:
        await client.zadd(f"{base}:{where}", {job: at})


async def test_patterns_scan_and_unlink_in_batches(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    for n in range(1203):
        await redis_client.set(f"{redis_prefix}cache:{n}", "x")
    await redis_client.set(f"{redis_prefix}other", "kept")
    step = purge(redis_url, patterns=[f"{redis_prefix}cache:*"], batch=100)
    first = await step.run(target())
    assert first.status == "done", first.detail
    assert first.data["removed"] == 1203
    assert "1203 key(s)" in first.detail
    assert await redis_client.get(f"{redis_prefix}other") == b"kept"
    assert [k async for k in redis_client.scan_iter(match=f"{redis_prefix}cache:*")] == []
    again = await step.run(target())
    assert again.status == "already_done"
    assert again.data["removed"] == 0


async def test_bull_layout_removes_the_queues_jobs_and_keeps_its_counter(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    base = f"{redis_prefix}bull:import"
    await bull_job(redis_client, base, "1", DEPLOYED_AT - 60, "wait")
    await bull_job(redis_client, base, "2", DEPLOYED_AT + 60, "active")
    await bull_job(redis_client, base, "3", DEPLOYED_AT + 61, "delayed")
    await bull_job(redis_client, base, "4", DEPLOYED_AT + 62, "paused")
    await redis_client.set(f"{base}:id", "4")
    await redis_client.hset(f"{base}:meta", mapping={"opts.maxLenEvents": "10000"})
    other = f"{redis_prefix}bull:email"
    await bull_job(redis_client, other, "1", DEPLOYED_AT + 60, "wait")
    step = purge(redis_url, queues=[{"layout": "bull", "queue": "import", "prefix": f"{redis_prefix}bull"}])
    result = await step.run(target())
    assert result.status == "done", result.detail
    # four job hashes, four locks, wait, active, delayed, paused
    assert result.data["removed"] == 12
    assert await redis_client.get(f"{base}:id") == b"4"
    assert await redis_client.exists(f"{base}:meta") == 1
    for key in ("1", "2", "3", "4", "wait", "active", "delayed", "paused"):
        assert await redis_client.exists(f"{base}:{key}") == 0, key
    assert await redis_client.exists(f"{other}:1", f"{other}:wait") == 2
    assert (await step.run(target())).status == "already_done"


async def test_bull_since_deploy_removes_only_the_new_releases_jobs(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    base = f"{redis_prefix}bull:import"
    await bull_job(redis_client, base, "1", DEPLOYED_AT - 60, "wait")
    await bull_job(redis_client, base, "2", DEPLOYED_AT + 60, "wait")
    await bull_job(redis_client, base, "3", DEPLOYED_AT - 10, "delayed")
    await bull_job(redis_client, base, "4", DEPLOYED_AT + 61, "delayed")
    await bull_job(redis_client, base, "5", DEPLOYED_AT + 62, "active")
    await redis_client.rpush(f"{base}:wait", "ghost")  # an id whose hash is gone: no time, kept
    step = purge(
        redis_url,
        queues=[{"layout": "bull", "queue": "import", "prefix": f"{redis_prefix}bull", "since_deploy": True}],
    )
    result = await step.run(target())
    assert result.status == "done", result.detail
    assert result.data["jobs"] == 3
    assert await redis_client.lrange(f"{base}:wait", 0, -1) == [b"1", b"ghost"]
    assert await redis_client.zrange(f"{base}:delayed", 0, -1) == [b"3"]
    assert await redis_client.lrange(f"{base}:active", 0, -1) == []
    assert await redis_client.exists(f"{base}:1", f"{base}:3") == 2
    assert await redis_client.exists(f"{base}:2", f"{base}:4", f"{base}:5", f"{base}:2:lock") == 0
    assert "kept 1 job(s) with no creation time" in result.detail
    again = await step.run(target())
    assert again.status == "already_done", again.detail


async def test_bull_since_deploy_without_a_deploy_time_fails(redis_prefix: str, redis_url: str) -> None:
    step = purge(
        redis_url,
        queues=[{"layout": "bull", "queue": "import", "prefix": f"{redis_prefix}bull", "since_deploy": True}],
    )
    result = await step.run(RollbackTarget("api", "unknown", SERVICE))
    assert result.status == "failed"
    assert "deploy" in result.detail


async def test_celery_layout_removes_the_queue_its_priorities_and_unacked(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    def message(task_id: str) -> str:
        return json.dumps({"headers": {"id": task_id, "task": "app.import"}, "body": ""})

    await redis_client.rpush(f"{redis_prefix}imports", message("a"), message("b"))
    await redis_client.rpush(f"{redis_prefix}imports\x06\x163", message("c"))
    await redis_client.rpush(f"{redis_prefix}emails", message("d"))
    unacked = f"{redis_prefix}unacked"
    await redis_client.hset(unacked, "tag-1", json.dumps([json.loads(message("e")), "", "imports"]))
    await redis_client.hset(unacked, "tag-2", json.dumps([json.loads(message("f")), "", "emails"]))
    await redis_client.zadd(f"{redis_prefix}unacked_index", {"tag-1": 1.0, "tag-2": 2.0})
    step = purge(redis_url, queues=[{"layout": "celery", "queue": "imports", "prefix": redis_prefix}])
    result = await step.run(target())
    assert result.status == "done", result.detail
    assert await redis_client.exists(f"{redis_prefix}imports", f"{redis_prefix}imports\x06\x163") == 0
    assert await redis_client.llen(f"{redis_prefix}emails") == 1
    assert await redis_client.hkeys(unacked) == [b"tag-2"]
    assert await redis_client.zrange(f"{redis_prefix}unacked_index", 0, -1) == [b"tag-2"]
    assert result.data["removed"] == 2
    assert result.data["unacked"] == 1


def test_unsafe_or_dishonest_purges_are_refused_at_load() -> None:
    for bad, said in (
        ({"patterns": ["*"]}, "literal prefix"),
        ({"patterns": ["a*"]}, "literal prefix"),
        ({}, "keys, patterns or queues"),
        ({"queues": [{"layout": "celery", "queue": "q", "since_deploy": True}]}, "creation time"),
        ({"queues": [{"layout": "bull", "queue": "q*"}]}, "queue"),
        ({"queues": [{"layout": "sidekiq", "queue": "q"}]}, "layout"),
    ):
        with pytest.raises(ValidationError, match=said):
            RedisPurgeConfig.model_validate(bad)


async def test_describe_names_what_it_would_remove(redis_url: str) -> None:
    step = purge(
        redis_url,
        patterns=["app:cache:*"],
        queues=[{"layout": "bull", "queue": "import", "since_deploy": True}],
    )
    lines = await step.describe(target())
    assert any("SCAN MATCH app:cache:*" in line for line in lines)
    assert any("bull queue 'import'" in line and "created after the deploy" in line for line in lines)
