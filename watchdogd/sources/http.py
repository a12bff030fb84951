"""HTTP probes: is the endpoint up, with which status, how fast."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

import aiohttp

from watchdogd.config.models import HttpSource
from watchdogd.model import Sample
from watchdogd.sources.base import Measure, read_body

MAX_BODY = 1 << 20


class HttpProbe:
    """One request per poll; fields ``up`` (1/0), ``status``, ``latency_seconds``.

    A probe that cannot connect is "down" (up = 0), not "no data": a dead
    health endpoint is exactly what the probe exists to see.
    """

    kind = "http"

    def __init__(self, name: str, config: HttpSource, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.config = config
        self.session = session
        self.body_match = re.compile(config.body_match) if config.body_match else None

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        status, latency, reason = await self.probe()
        values = {"up": 0.0 if reason else 1.0, "status": float(status), "latency_seconds": latency}
        return {m: Sample(at, values[m.expr or "up"], reason) for m in measures}

    async def probe(self) -> tuple[int, float, str | None]:
        """Status (0 when none), latency in seconds, and why it is down (None when up)."""
        cfg = self.config
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        started = time.perf_counter()
        try:
            async with self.session.request(
                cfg.method,
                cfg.url.secret(),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            ) as response:
                body = await read_body(response, MAX_BODY, truncate=True) if self.body_match else b""
                status = response.status
        except TimeoutError:
            return 0, time.perf_counter() - started, f"no answer within {cfg.timeout:g}s"
        except aiohttp.ClientError as exc:
            return 0, time.perf_counter() - started, f"cannot reach {cfg.url}: {type(exc).__name__}"
        latency = time.perf_counter() - started
        expected = cfg.expect_status
        if (status not in expected) if expected else not 200 <= status < 300:
            return status, latency, f"status {status}"
        if self.body_match and not self.body_match.search(body.decode("utf-8", "replace")):
            return status, latency, f"body does not match /{self.body_match.pattern}/"
        return status, latency, None

    async def close(self) -> None:
        """The session belongs to the daemon."""
