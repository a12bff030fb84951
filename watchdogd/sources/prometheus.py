"""PromQL instant queries against anything that speaks the Prometheus HTTP API."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from watchdogd.config.models import PrometheusSource
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.selector import bucket_selector
from watchdogd.sources.base import Measure, read_body
from watchdogd.sources.counts import BucketMemory, CounterMemory

MAX_BODY = 8 << 20


class PrometheusQuery:
    """One ``/api/v1/query`` per measure, concurrently; several series reduce by ``aggregation``."""

    kind = "prometheus"

    def __init__(
        self,
        name: str,
        config: PrometheusSource,
        session: aiohttp.ClientSession,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.wall = wall
        self.config = config
        self.session = session
        self.endpoint = config.url.secret().rstrip("/") + "/api/v1/query"
        headers = {k: v.get_secret_value() for k, v in config.headers.items()}
        if config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        self.headers = headers
        self.auth = (
            aiohttp.BasicAuth(config.basic_auth.username, config.basic_auth.password.get_secret_value())
            if config.basic_auth
            else None
        )
        self.memory = CounterMemory()
        self.histograms = BucketMemory()

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        answers = await asyncio.gather(
            *(
                self.counts(m, at)
                if m.kind == "counts"
                else self.buckets(m, at)
                if m.kind == "buckets"
                else self.query(m.expr, at)
                for m in measures
            )
        )
        return dict(zip(measures, answers, strict=True))

    async def counts(self, measure: Measure, at: float) -> Sample:
        """A sequential rule's counts: both counters' series queried, their growth since the last poll."""
        errors, requests = await asyncio.gather(self.post(measure.expr), self.post(measure.denominator))
        by_series: list[dict[str, float]] = []
        for status, body in (errors, requests):
            series = parse_series_answer(status, body)
            if isinstance(series, str):
                return Sample.missing(at, series, "bad_answer")
            by_series.append(series)
        key = f"{measure.expr}\0{measure.denominator}"
        return self.memory.counts(key, at, by_series[0], by_series[1], (measure.expr, measure.denominator))

    async def buckets(self, measure: Measure, at: float) -> Sample:
        """A latency rule's requests per bucket: the ``_bucket`` series queried, their growth by ``le``."""
        try:
            promql = bucket_selector(measure.expr)
        except ValueError as exc:
            return Sample.missing(at, str(exc), "bad_answer")
        status, body = await self.post(promql)
        series = parse_series_answer(status, body)
        if isinstance(series, str):
            return Sample.missing(at, series, "bad_answer")
        return self.histograms.buckets(measure.expr, at, series, promql)

    async def query(self, promql: str, at: float) -> Sample:
        status, body = await self.post(promql)
        return parse_query_answer(status, body, at, self.config.aggregation)

    async def post(self, promql: str) -> tuple[int, bytes]:
        """The answer (status, body) of an instant query; SourceError when there is none."""

        try:
            async with self.session.post(
                self.endpoint,
                # the server's time is the wall clock's, not watchdogd's steady one (which may have drifted)
                data={"query": promql, "time": f"{self.wall():.3f}"},
                headers=self.headers,
                auth=self.auth,
                # a redirect would carry the source's headers (API keys, tenant ids) to another origin
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                if 300 <= response.status < 400:
                    where = response.headers.get("Location", "nowhere")[:200]
                    raise SourceError(
                        f"{self.config.url} answered HTTP {response.status}, a redirect to {where}, "
                        "not followed: configure the final URL",
                        "http_status",
                    )
                body = await read_body(response, MAX_BODY)
                status = response.status
        except TimeoutError as exc:
            raise SourceError(
                f"{self.config.url}: no answer within {self.config.timeout:g}s", "timeout"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise SourceError(f"{self.config.url}: {type(exc).__name__}: {exc}", "unreachable") from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"{self.config.url}: {type(exc).__name__}: {exc}", "http") from exc
        return status, body

    async def close(self) -> None:
        """Nothing of its own: the HTTP session is shared and closed by its owner."""


def parse_query_answer(status: int, body: bytes, at: float, aggregation: str) -> Sample:
    """A Sample from an ``/api/v1/query`` answer; raises SourceError for a broken server."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SourceError(f"answer is not JSON (HTTP {status})") from None
    if not isinstance(doc, dict):
        raise SourceError(f"answer is not a JSON object (HTTP {status})")
    if doc.get("status") != "success":
        kind = doc.get("errorType", "error")
        error = str(doc.get("error", "no error given"))[:300]
        if 400 <= status < 500 or kind == "bad_data":
            # a query the server refuses (a PromQL typo) is an error, never a quiet "no data"
            return Sample.missing(at, f"query refused: {kind}: {error}", _label(kind))
        raise SourceError(f"query failed (HTTP {status}): {kind}: {error}", "server_error")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise SourceError("answer has no data")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        return _sample(at, [_number(result)])
    if kind == "vector":
        if not isinstance(result, list):
            raise SourceError("vector answer is not a list")
        if not result:
            return Sample.missing(at, "empty result: no series matched the query", "empty")
        values = [_number(item.get("value") if isinstance(item, dict) else None) for item in result]
        if len(values) > 1 and aggregation == "single":
            return Sample.missing(at, f"{len(values)} series where one was expected", "not_single")
        return _sample(at, values, aggregation)
    return Sample.missing(
        at, f"unsupported result type {kind!r}: the query must give a scalar or a vector", "bad_answer"
    )


def parse_series_answer(status: int, body: bytes) -> dict[str, float] | str:
    """Each series of an instant vector answer by its labels; a text saying why not (SourceError for a
    broken server)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SourceError(f"answer is not JSON (HTTP {status})") from None
    if not isinstance(doc, dict):
        raise SourceError(f"answer is not a JSON object (HTTP {status})")
    if doc.get("status") != "success":
        kind, error = doc.get("errorType", "error"), str(doc.get("error", "no error given"))[:300]
        if 400 <= status < 500 or kind == "bad_data":
            return f"query refused: {kind}: {error}"
        raise SourceError(f"query failed (HTTP {status}): {kind}: {error}", "server_error")
    data = doc.get("data")
    if (
        not isinstance(data, dict)
        or data.get("resultType") != "vector"
        or not isinstance(data.get("result"), list)
    ):
        return "the counters' selectors must give instant vectors"
    series: dict[str, float] = {}
    for item in data["result"]:
        if not isinstance(item, dict):
            raise SourceError("malformed series in answer")
        labels = item.get("metric")
        key = json.dumps(labels, sort_keys=True) if isinstance(labels, dict) else ""
        value = _number(item.get("value"))
        if not math.isnan(value):
            series[key] = value
    return series


def _number(pair: Any) -> float:
    if not (isinstance(pair, list) and len(pair) == 2):
        raise SourceError("malformed sample in answer")
    try:
        return float(pair[1])
    except (TypeError, ValueError, OverflowError):
        raise SourceError(f"sample value {str(pair[1])[:40]!r} is not a number") from None


def _sample(at: float, values: list[float], aggregation: str = "max") -> Sample:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Sample(at, None, "value is NaN")
    if aggregation == "min":
        value = min(finite)
    elif aggregation == "sum":
        value = _total(finite)
    elif aggregation == "avg":
        value = _total(finite) / len(finite)
    else:
        value = max(finite)
    if math.isnan(value):
        return Sample(at, None, "value is NaN (+Inf and -Inf together)")
    return Sample(at, value)


def _total(values: list[float]) -> float:
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):  # +Inf with -Inf, or finite values past the float range
        return sum(values)


def _label(kind: object) -> str:
    """Prometheus's ``errorType`` as a metric label: one of its few words, never free text."""
    known = ("bad_data", "timeout", "canceled", "execution", "unavailable", "not_found", "internal")
    return str(kind) if kind in known else "refused"
