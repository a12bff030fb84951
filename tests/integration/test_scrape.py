"""The scrape source: agreement with a real Prometheus on the same app, and faults.

The fault cases use a small local aiohttp server to serve what a real
exporter would not: 500 answers, garbage, NaN, duplicates, huge bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.testbed.containers import free_port
from tests.testbed.images import AppBehaviour
from watchdogd.config.models import ScrapeSource
from watchdogd.model import Sample
from watchdogd.sources.base import Measure, Poller
from watchdogd.sources.scrape import MAX_BODY, MetricsScrape
from watchdogd.telemetry import Metrics, source_errors

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WINDOW = 10.0

RATE = Measure("rate", "http_requests_total", over=WINDOW)
RATIO = Measure("ratio", 'http_requests_total{code=~"5.."}', "http_requests_total", over=WINDOW)
P99 = Measure("quantile", "http_request_duration_seconds", over=WINDOW, q=0.99)
VERSION = Measure("metric", 'app_info{version="v2"}')


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def fake_server(fake_server: Callable[[Handler], Awaitable[str]]) -> Callable[[Handler], Awaitable[str]]:
    """The shared fake server (tests/conftest.py), its URL ending with ``/metrics``."""
    outer = fake_server

    async def start(handler: Handler) -> str:
        return f"{await outer(handler)}/metrics"

    return start


def scrape_source(url: str, session: aiohttp.ClientSession, **config: Any) -> MetricsScrape:
    return MetricsScrape(
        "app", ScrapeSource.model_validate({"type": "scrape", "url": url, **config}), session
    )


def errors(metrics: Metrics) -> float:
    return source_errors(metrics.registry, "app")


def prom_value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


# --- agreement with Prometheus ---------------------------------------------------------


async def test_rate_ratio_and_p99_agree_with_prometheus(
    app_container: Any, prometheus_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    # 5% of requests take 2s, the rest 30ms: P99 is 4/5 of the way into the (1, 2.5] bucket
    behaviour = AppBehaviour(rps=1000, error_ratio=0.2, latency_slow_fraction=0.05, latency_slow_seconds=2)
    app = app_container("v2", behaviour)
    prom = prometheus_server([app])
    await asyncio.to_thread(prom.wait_targets_up, 30.0)

    poller = Poller(scrape_source(app.metrics_url, session), 5.0, metrics)
    measures = [RATE, RATIO, P99, VERSION]
    first = await poller.poll(measures, time.time())
    assert first[RATE] == Sample(first[RATE].time, None, "warming up: 0s of 10s seen")
    assert first[VERSION].value == 1.0
    samples: dict[Measure, Sample] = first
    for _ in range(int(WINDOW) + 2):
        await asyncio.sleep(1.0)
        samples = await poller.poll(measures, time.time())
    at = samples[RATE].time
    # let Prometheus store its scrape from just before ``at``
    await asyncio.sleep(1.5)

    w = f"[{WINDOW:g}s]"
    expected = {
        RATE: prom_value(prom.query(f"sum(rate(http_requests_total{w}))", at)),
        RATIO: prom_value(
            prom.query(
                f'sum(rate(http_requests_total{{code=~"5.."}}{w})) / sum(rate(http_requests_total{w}))', at
            )
        ),
        P99: prom_value(
            prom.query(
                f"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{w})))", at
            )
        ),
    }
    for measure, want in expected.items():
        got = samples[measure].value
        assert got is not None, samples[measure]
        print(f"{measure.kind}: watchdogd {got:.8g} prometheus {want:.8g} off {abs(got / want - 1):.4%}")
        assert got == pytest.approx(want, rel=0.01)
    # and both are what the app was told to do
    assert expected[RATE] == pytest.approx(1000, rel=0.02)
    assert expected[RATIO] == pytest.approx(0.2, rel=0.02)
    assert expected[P99] == pytest.approx(1.0 + 1.5 * 0.8, rel=0.02)
    assert errors(metrics) == 0


# --- deterministic scrapes at given times ---------------------------------------------------


async def test_samples_recorded_at_the_poll_time(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """A counter served as 0, 10, 20, 10 (restarted), 20 over polls 1s apart is 10/s."""
    bodies = iter(f'# TYPE c_total counter\nc_total{{code="500"}} {v}\n' for v in (0, 10, 20, 10, 20))
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Token"))
        return web.Response(text=next(bodies))

    url = await fake_server(answer)
    source = scrape_source(url, session, headers={"X-Token": "s3cret"})
    poller = Poller(source, 2.0, metrics)
    rate = Measure("rate", 'c_total{code=~"5.."}', over=4.0)
    results = [(await poller.poll([rate], 1000.0 + i))[rate] for i in range(5)]
    assert [s.time for s in results] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    # a window not covered yet has no value (it would read low), it says how far it got
    assert [r.reason for r in results[:4]] == [f"warming up: {i}s of 4s seen" for i in (0, 1, 2, 3)]
    assert [r.value for r in results[:4]] == [None] * 4
    # (1000, 1004] holds 10, 20, 10, 20: +10, a restart (+10 since), +10, extrapolated to 4s
    assert results[-1].value == pytest.approx(10.0)
    assert seen == ["s3cret"] * 5
    assert "s3cret" not in repr(source.config)


# --- faults -----------------------------------------------------------------------------------


def _many_series(count: int) -> str:
    return "# TYPE m gauge\n" + "".join(f'm{{i="{i}"}} 1\n' for i in range(count))


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b"oops", "answered HTTP 500"),
        (200, b"<html><body>Welcome to nginx!</body></html>", "not a Prometheus text exposition"),
        (200, b"http_requests_total{code=500 1\n", "not a Prometheus text exposition"),
        (200, b"\xff\xfe\x00garbage", "not UTF-8"),
        (200, _many_series(10_001).encode(), "more than 10000 series"),
    ],
    ids=["500", "html", "broken-line", "binary", "too-many-series"],
)
async def test_bad_answers_are_no_data_and_counted(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics, status: int, body: bytes, reason: str
) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="text/plain")

    poller = Poller(scrape_source(await fake_server(answer), session), 5.0, metrics)
    samples = await poller.poll([RATE, VERSION], time.time())
    for sample in samples.values():
        assert sample.value is None and reason in (sample.reason or "")
    assert errors(metrics) == 1


async def test_exactly_max_series_is_accepted(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    body = _many_series(10_000)

    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=body)

    poller = Poller(scrape_source(await fake_server(answer), session), 5.0, metrics)
    gauge = Measure("metric", 'm{i=~"99.."}')
    assert (await poller.poll([gauge], time.time()))[gauge].value == 100.0
    assert errors(metrics) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_too_large_body_is_refused(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics, chunked: bool
) -> None:
    line = b'm{i="x"} 1\n' * (1 << 16)

    async def answer(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=line * (MAX_BODY // len(line) + 1))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(MAX_BODY // len(line) + 2):
                await response.write(line)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    poller = Poller(scrape_source(await fake_server(answer), session), 10.0, metrics)
    sample = (await poller.poll([VERSION], time.time()))[VERSION]
    assert sample.value is None and "over the limit of 16777216" in (sample.reason or "")
    assert errors(metrics) == 1


async def test_nan_inf_and_duplicates_spoil_only_their_measures(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    body = iter(
        (
            f"# TYPE ok_total counter\nok_total {n}\n"
            f"# TYPE broken_total counter\nbroken_total {'NaN' if n else 1}\n"
            f"# TYPE hot gauge\nhot +Inf\ncold NaN\n"
            f'twice{{a="1"}} 1\ntwice{{a="1"}} 2\ntwice{{a="2"}} 5\n'
        )
        for n in (10, 20, 30)
    )

    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=next(body))

    ok = Measure("rate", "ok_total", over=2.0)
    broken = Measure("rate", "broken_total", over=2.0)
    hot, cold = Measure("metric", "hot"), Measure("metric", "cold")
    twice, single = Measure("metric", "twice"), Measure("metric", 'twice{a="2"}')
    measures = [ok, broken, hot, cold, twice, single]
    poller = Poller(scrape_source(await fake_server(answer), session), 5.0, metrics)
    await poller.poll(measures, 100.0)
    await poller.poll(measures, 101.0)  # a window is full from here; its rate needs one more poll
    samples = await poller.poll(measures, 102.0)
    assert (samples[ok].value or 0.0) > 0
    assert samples[broken].value is None and "broken_total has the value nan" in (
        samples[broken].reason or ""
    )
    assert samples[hot].value == float("inf")
    assert samples[cold] == Sample(102.0, None, "cold is NaN")
    assert samples[twice] == Sample(102.0, None, 'twice{a="1"} appears more than once in the scrape')
    assert samples[single].value == 5.0
    # the endpoint itself answered fine: these are the exporter's values, not a failed source
    assert errors(metrics) == 0


async def test_down_server_is_no_data_and_counted(session: aiohttp.ClientSession, metrics: Metrics) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    poller = Poller(scrape_source(url, session, timeout="1s"), 2.0, metrics)
    for _ in range(3):
        sample = (await poller.poll([RATE], time.time()))[RATE]
        assert sample.value is None and "cannot scrape" in (sample.reason or "")
        assert "ClientConnectorError" in (sample.reason or "")
    assert errors(metrics) == 3


async def test_hanging_server_times_out(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late 1\n")

    poller = Poller(scrape_source(await fake_server(hang), session, timeout="300ms"), 5.0, metrics)
    started = time.perf_counter()
    sample = (await poller.poll([RATE], time.time()))[RATE]
    assert time.perf_counter() - started < 2
    assert sample.value is None and "no answer within 0.3s" in (sample.reason or "")
    assert errors(metrics) == 1


async def test_window_longer_than_retention_and_unknown_measure(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(text="c_total 1\n")

    source = scrape_source(await fake_server(answer), session, retention="30s")
    long = Measure("rate", "c_total", over=60.0)
    field = Measure("field", "up")
    bad = Measure("metric", 'c_total{code=~"("}')
    samples = await Poller(source, 5.0, metrics).poll([long, field, bad], 10.0)
    assert samples[long].reason == "window 60s is longer than the retention of 30s"
    assert samples[field].reason == "a scrape source has no 'field' measure"
    assert "bad regular expression" in (samples[bad].reason or "")


async def test_history_holds_only_wanted_series_for_the_longest_window(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """1000 series in each scrape, one wanted: 2 minutes of 1s polls keep 61 points of it."""
    body = _many_series(999) + "# TYPE c_total counter\nc_total 5\n"

    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=body)

    source = scrape_source(await fake_server(answer), session)
    poller = Poller(source, 5.0, metrics)
    for t in range(120):
        await poller.poll([Measure("rate", "c_total", over=60.0)], float(t))
    assert len(source.store) == 1
    assert source.store.points == 61


async def test_a_window_after_a_deploy_holds_only_the_new_version(
    fake_server: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """8% errors until a deploy at 1010.5, none after: read at 1012, a 10s window is mostly the old
    version's; clipped at the deploy it is the new one's, and it has no value before two polls."""
    errors_, total = 0, 0
    bodies = []
    for second in range(13):
        bodies.append(
            "# TYPE r_total counter\n"
            f'r_total{{code="500"}} {errors_}\nr_total{{code="200"}} {total - errors_}\n'
        )
        total += 100
        errors_ += 8 if second < 10 else 0
    served = iter(bodies)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=next(served))

    source = scrape_source(await fake_server(answer), session)
    poller = Poller(source, 2.0, metrics)
    ratio = Measure("ratio", 'r_total{code="500"}', "r_total", over=10.0)
    samples = [(await poller.poll([ratio], 1000.0 + i))[ratio] for i in range(13)]
    deploy = 1010.5
    whole = samples[-1]
    assert whole.value is not None and whole.value > 0.05  # the old version's errors, mostly
    assert source.since(ratio, whole, deploy).value == pytest.approx(0.0)
    one_poll = source.since(ratio, samples[11], deploy)  # only 1011 after the deploy
    assert one_poll.value is None and one_poll.reason is not None and "since the deploy" in one_poll.reason
    late = source.since(ratio, whole, 1001.5)  # the window no longer reaches before the deploy
    assert late == whole
