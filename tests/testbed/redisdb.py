"""Per-test key prefixes on the test bed's Redis (127.0.0.1:6379, db 0)."""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

REDIS_URL = "redis://127.0.0.1:6379/0"


def new_prefix() -> str:
    """A unique key prefix, e.g. ``wdtest:1a2b3c4d5e6f:``."""
    return f"wdtest:{secrets.token_hex(6)}:"


def client(url: str = REDIS_URL) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)


async def delete_prefix(redis: aioredis.Redis, prefix: str) -> int:
    """Delete every key starting with ``prefix``; returns how many went."""
    if not prefix or any(ch in prefix for ch in "*?[]\\"):
        raise ValueError(f"refusing to delete by unsafe prefix {prefix!r}")
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=prefix + "*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.delete(*batch)
            batch.clear()
    if batch:
        deleted += await redis.delete(*batch)
    return deleted
