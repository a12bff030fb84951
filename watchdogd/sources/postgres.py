"""SQL probes on PostgreSQL: a number from a query, or whether it answers at all."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import asyncpg

from watchdogd.config.models import PostgresSource
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.sources.base import Measure


class PostgresProbe:
    """A small pool; queries run read-only with a statement timeout.

    ``field: connected`` is 1 when a ``SELECT 1`` answers and 0 when it does
    not: losing the database is the signal, not missing data.
    """

    kind = "postgres"

    def __init__(self, name: str, config: PostgresSource) -> None:
        self.name = name
        self.config = config
        self.pool: asyncpg.Pool | None = None

    async def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                self.config.dsn.secret(),
                min_size=0,
                max_size=2,
                timeout=self.config.timeout,
                command_timeout=self.config.timeout,
                server_settings={"application_name": "watchdogd-probe"},
            )
        return self.pool

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        out: dict[Measure, Sample] = {}
        for measure in measures:
            if measure.kind == "field":
                out[measure] = Sample(at, 1.0 if await self.connected() else 0.0)
            else:
                out[measure] = await self.scalar(measure.expr, at)
        return out

    async def connected(self) -> bool:
        try:
            pool = await self._pool()
            async with pool.acquire(timeout=self.config.timeout) as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    async def scalar(self, query: str, at: float) -> Sample:
        timeout_ms = int(self.config.timeout * 1000)
        try:
            pool = await self._pool()
            async with pool.acquire(timeout=self.config.timeout) as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                row = await conn.fetchrow(query)
        except (OSError, TimeoutError) as exc:
            raise SourceError(f"postgres {self.config.dsn}: cannot connect: {type(exc).__name__}") from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return Sample(at, None, f"query failed: {type(exc).__name__}: {exc}")
        if row is None or len(row) == 0 or row[0] is None:
            return Sample(at, None, "query returned no value")
        try:
            value = float(row[0])
        except (TypeError, ValueError):
            return Sample(at, None, f"query returned {type(row[0]).__name__}, not a number")
        return Sample(at, value) if not math.isnan(value) else Sample(at, None, "value is NaN")

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
