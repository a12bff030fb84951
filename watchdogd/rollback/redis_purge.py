"""The redis_purge step: removes the bad release's queued work from Redis.

What it removes, each part reported with its count:

- ``keys``: exact names, UNLINKed.
- ``patterns``: found with SCAN MATCH (never KEYS, which blocks the server),
  UNLINKed in batches. Every key is found before any is removed, so a purge
  over ``max_keys`` fails having removed nothing of that pattern.
- ``queues`` by layout. **Bull/BullMQ**: every key under ``PREFIX:QUEUE:``
  except the queue's own bookkeeping (``id``, the job id counter, so ids are
  never reused; ``meta``, ``events``, ``repeat`` definitions, ``limiter``,
  ``metrics:*``). With ``since_deploy`` only the jobs whose hash says they
  were created (``timestamp``, ms) at or after the deploy started: their ids
  leave every list and sorted set, their hashes and sub-keys go; a job whose
  hash is gone or has no timestamp cannot be dated and is kept (and counted).
  **Celery** (Redis broker): the list ``QUEUE``, its priority lists
  (``QUEUE\\x06\\x16N``) and the messages in ``unacked`` whose routing key is
  the queue (delivered, not yet acknowledged: the broker would give them back).
  Celery's messages carry no creation time, so a Celery queue is purged whole.

Idempotent: run again, it finds nothing and says ``already_done``. Written
here rather than taken from Bull's or Celery's own clients because neither is
a Python dependency this daemon should carry (Bull is JavaScript) and both
purge by whole queue only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from watchdogd.config.models import QueuePurge, RedisPurgeConfig
from watchdogd.rollback.base import RollbackTarget, StepResult

DeployedAt = Callable[[str], Awaitable[float | None]]
"""When a deployment started (seconds since the epoch), by its id; None when unknown."""

BULL_KEPT = frozenset({"id", "meta", "events", "repeat", "limiter", "stalled-check"})
BULL_LISTS = ("wait", "active", "paused")
BULL_ZSETS = ("delayed", "prioritized", "priority", "waiting-children", "completed", "failed")
BULL_JOB_KEYS = ("", ":lock", ":logs", ":dependencies", ":processed", ":failed", ":unsuccessful")
CELERY_PRIORITY_SEP = "\x06\x16"


class PurgeError(Exception):
    """A purge that must stop (over max_keys, no deploy time): the step fails with it."""


def text(raw: object) -> str:
    """A Redis reply as text."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def escape(literal: str) -> str:
    """``literal`` as a MATCH pattern that matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in literal)


@dataclass
class Tally:
    removed: int = 0
    jobs: int = 0
    unacked: int = 0
    undated: int = 0
    parts: list[str] = field(default_factory=list)


class RedisPurgeStep:
    """Removes keys, key patterns and queues' jobs; reports how many keys went."""

    name = "redis_purge"

    def __init__(self, config: RedisPurgeConfig, deployed_at: DeployedAt | None = None) -> None:
        self.config = config
        self.deployed_at = deployed_at

    async def run(self, target: RollbackTarget) -> StepResult:
        client = aioredis.Redis.from_url(
            self.config.url.secret(), socket_timeout=10, socket_connect_timeout=5
        )
        tally = Tally()
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._purge(client, target, tally)
        except TimeoutError:
            return self._stopped(tally, f"not finished within {self.config.timeout:g}s")
        except PurgeError as exc:
            return self._stopped(tally, str(exc))
        except (RedisError, OSError) as exc:
            return self._stopped(tally, f"redis {self.config.url}: {type(exc).__name__}: {exc}")
        finally:
            await client.aclose()
        data = {"removed": tally.removed, "jobs": tally.jobs, "unacked": tally.unacked, "parts": tally.parts}
        said = "; ".join(tally.parts)
        if tally.undated:
            said += f"; kept {tally.undated} job(s) with no creation time"
        if tally.removed == 0 and tally.unacked == 0:
            return StepResult("already_done", f"nothing to purge: {said}", data)
        return StepResult("done", f"removed {tally.removed} key(s): {said}", data)

    def _stopped(self, tally: Tally, why: str) -> StepResult:
        done = f" (removed {tally.removed} key(s) before: {'; '.join(tally.parts)})" if tally.parts else ""
        return StepResult("failed", why + done, {"removed": tally.removed})

    async def _purge(self, client: aioredis.Redis, target: RollbackTarget, tally: Tally) -> None:
        if self.config.keys:
            removed = await self._unlink(client, list(self.config.keys))
            tally.removed += removed
            tally.parts.append(f"keys {', '.join(self.config.keys)}: {removed}")
        for pattern in self.config.patterns:
            keys = await self._scan(client, pattern)
            removed = await self._unlink(client, keys)
            tally.removed += removed
            tally.parts.append(f"pattern '{pattern}': {removed}")
        for queue in self.config.queues:
            if queue.layout == "celery":
                await self._celery(client, queue, tally)
            elif queue.since_deploy:
                await self._bull_since(client, queue, await self._deploy_ms(target), tally)
            else:
                await self._bull(client, queue, tally)

    async def _deploy_ms(self, target: RollbackTarget) -> int:
        started = await self.deployed_at(target.deployment_id) if self.deployed_at else None
        if started is None:
            raise PurgeError(
                f"since_deploy: when deployment {target.deployment_id} started is not known; nothing purged"
            )
        return int(started * 1000)

    async def _scan(self, client: aioredis.Redis, pattern: str) -> list[bytes]:
        """Every key matching ``pattern``, at most ``max_keys`` (more is an error, nothing removed)."""
        found: set[bytes] = set()  # SCAN may return a key twice
        async for key in client.scan_iter(match=pattern, count=self.config.batch):
            found.add(key)
            if len(found) > self.config.max_keys:
                raise PurgeError(f"'{pattern}' matches more than max_keys ({self.config.max_keys}) keys")
        return sorted(found)

    async def _unlink(self, client: aioredis.Redis, keys: Iterable[bytes | str]) -> int:
        batch, removed = list(keys), 0
        for start in range(0, len(batch), self.config.batch):
            removed += int(await client.unlink(*batch[start : start + self.config.batch]))
        return removed

    # --- bull ------------------------------------------------------------------------------------------

    @staticmethod
    def _bull_base(queue: QueuePurge) -> str:
        return f"{queue.prefix if queue.prefix is not None else 'bull'}:{queue.queue}"

    async def _bull(self, client: aioredis.Redis, queue: QueuePurge, tally: Tally) -> None:
        base = self._bull_base(queue)
        keys, skip = [], len((base + ":").encode())
        for key in await self._scan(client, escape(base + ":") + "*"):
            rest = text(key[skip:])
            if rest not in BULL_KEPT and not rest.startswith("metrics:"):
                keys.append(key)
        removed = await self._unlink(client, keys)
        tally.removed += removed
        tally.parts.append(f"bull queue '{queue.queue}': {removed}")

    async def _bull_ids(self, client: aioredis.Redis, base: str) -> list[str]:
        """Every job id the queue's lists and sorted sets name, read in batches."""
        ids: dict[str, None] = {}
        step = self.config.batch
        for name in (*BULL_LISTS, *BULL_ZSETS):
            key, start = f"{base}:{name}", 0
            kind = text(await client.type(key))
            while kind in ("list", "zset"):
                chunk = await (
                    client.lrange(key, start, start + step - 1)
                    if kind == "list"
                    else client.zrange(key, start, start + step - 1)
                )
                ids.update((text(raw), None) for raw in chunk)
                if len(ids) > self.config.max_keys:
                    raise PurgeError(
                        f"bull queue at {base} holds more than max_keys ({self.config.max_keys}) jobs"
                    )
                if len(chunk) < step:
                    break
                start += step
        return list(ids)

    async def _bull_since(
        self, client: aioredis.Redis, queue: QueuePurge, since_ms: int, tally: Tally
    ) -> None:
        base = self._bull_base(queue)
        ids = await self._bull_ids(client, base)
        new: list[str] = []
        for start in range(0, len(ids), self.config.batch):
            chunk = ids[start : start + self.config.batch]
            async with client.pipeline(transaction=False) as pipe:
                for job in chunk:
                    pipe.hget(f"{base}:{job}", "timestamp")
                stamps = await pipe.execute()
            for job, stamp in zip(chunk, stamps, strict=True):
                try:
                    created = int(float(stamp)) if stamp is not None else None
                except ValueError:
                    created = None
                if created is None:
                    tally.undated += 1
                elif created >= since_ms:
                    new.append(job)
        removed = 0
        for start in range(0, len(new), self.config.batch):
            chunk = new[start : start + self.config.batch]
            # One MULTI per batch: a job leaves its lists and loses its hash together.
            async with client.pipeline(transaction=True) as pipe:
                for name in BULL_LISTS:
                    for job in chunk:
                        pipe.lrem(f"{base}:{name}", 0, job)
                for name in BULL_ZSETS:
                    pipe.zrem(f"{base}:{name}", *chunk)
                pipe.srem(f"{base}:stalled", *chunk)
                pipe.unlink(*(f"{base}:{job}{suffix}" for job in chunk for suffix in BULL_JOB_KEYS))
                answers = await pipe.execute()
            removed += int(answers[-1])
        tally.removed += removed
        tally.jobs += len(new)
        tally.parts.append(
            f"bull queue '{queue.queue}', jobs created after the deploy: {len(new)} job(s), {removed} key(s)"
        )

    # --- celery ----------------------------------------------------------------------------------------

    async def _celery(self, client: aioredis.Redis, queue: QueuePurge, tally: Tally) -> None:
        prefix = queue.prefix or ""
        name = prefix + queue.queue
        keys: list[bytes | str] = [name]
        keys.extend(await self._scan(client, escape(name + CELERY_PRIORITY_SEP) + "*"))
        removed = await self._unlink(client, keys)
        unacked = await self._celery_unacked(client, prefix, queue.queue)
        tally.removed += removed
        tally.unacked += unacked
        tally.parts.append(
            f"celery queue '{queue.queue}': {removed} key(s), {unacked} unacknowledged message(s)"
        )

    async def _celery_unacked(self, client: aioredis.Redis, prefix: str, queue: str) -> int:
        """Remove the queue's delivered but unacknowledged messages (kombu's ``unacked`` hash)."""
        unacked, index = f"{prefix}unacked", f"{prefix}unacked_index"
        tags: list[bytes] = []
        async for tag, raw in client.hscan_iter(unacked, count=self.config.batch):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # not kombu's; not ours to judge
            if isinstance(entry, list) and len(entry) >= 3 and entry[2] == queue:
                tags.append(tag)
                if len(tags) > self.config.max_keys:
                    raise PurgeError(f"more than max_keys ({self.config.max_keys}) unacked messages")
        removed = 0
        for start in range(0, len(tags), self.config.batch):
            chunk = tags[start : start + self.config.batch]
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(unacked, *chunk)
                pipe.zrem(index, *chunk)
                answers = await pipe.execute()
            removed += int(answers[0])
        return removed

    async def describe(self, target: RollbackTarget) -> list[str]:
        where = f"on {self.config.url}"
        lines = [f"UNLINK {' '.join(self.config.keys)} {where}"] if self.config.keys else []
        lines += [f"SCAN MATCH {p} then UNLINK what matched {where}" for p in self.config.patterns]
        for queue in self.config.queues:
            if queue.layout == "celery":
                lines.append(
                    f"celery queue '{queue.queue}': its list, priority lists and unacked messages {where}"
                )
            elif queue.since_deploy:
                lines.append(f"bull queue '{queue.queue}': the jobs created after the deploy {where}")
            else:
                lines.append(
                    f"bull queue '{queue.queue}': every job and list under {self._bull_base(queue)}: "
                    f"(keeping id, meta, events, repeat) {where}"
                )
        return lines
