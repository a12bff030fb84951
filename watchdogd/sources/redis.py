"""Queue depth in Redis: a list, sorted set or stream, or the sum of several."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from watchdogd.config.models import RedisSource
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.sources.base import Measure

_LENGTH_OF = {b"list": "LLEN", b"zset": "ZCARD", b"stream": "XLEN", b"none": ""}


class RedisQueue:
    kind = "redis"

    def __init__(self, name: str, config: RedisSource) -> None:
        self.name = name
        self.config = config
        self.keys = (config.key,) if isinstance(config.key, str) else tuple(config.key)
        self.client = aioredis.Redis.from_url(
            config.url.secret(),
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            max_connections=2,
        )

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        depth = await self.depth()
        return {m: Sample(at, float(depth)) for m in measures}

    async def depth(self) -> int:
        """The summed length of the keys; a key that does not exist counts 0."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.keys:
                    pipe.type(key)
                kinds = await pipe.execute()
            total = 0
            for key, kind in zip(self.keys, kinds, strict=True):
                raw = kind if isinstance(kind, bytes) else str(kind).encode()
                command = _LENGTH_OF.get(raw)
                if command is None:
                    raise SourceError(f"key '{key}' is a {raw.decode()}, not a list, sorted set or stream")
                if command:
                    total += int(await self.client.execute_command(command, key))  # type: ignore[no-untyped-call]
            return total
        except RedisError as exc:
            raise SourceError(f"redis {self.config.url}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self.client.aclose()
