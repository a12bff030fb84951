"""How many scrape sources one watchdogd process polls, and what it costs.

Starts local fake exporters in a child process (so their work is not counted),
then schedules N scrape sources at an interval with watchdogd's own scheduler
and pollers, each asked for a ratio and a P99, for a fixed time. Prints polls
per second achieved against the schedule, failed polls, and the CPU the
polling process used (one core = 100%).

    .venv/bin/python bench/sources.py --sources 1000 --interval 5 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import socket
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from watchdogd.config.models import ScrapeSource
from watchdogd.config.types import SecretUrl
from watchdogd.model import Sample
from watchdogd.sources.base import Measure
from watchdogd.sources.schedule import SourceJobs
from watchdogd.sources.scrape import MetricsScrape
from watchdogd.telemetry import Metrics

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MEASURES = (
    Measure("ratio", 'http_requests_total{code=~"5.."}', "http_requests_total", over=60.0),
    Measure("quantile", "http_request_duration_seconds", over=60.0, q=0.99),
)


def exposition(tick: int) -> str:
    """A typical small app's /metrics: request counters by code, a latency histogram, some gauges."""
    lines = ["# TYPE http_requests_total counter"]
    for code, share in (("200", 0.97), ("404", 0.02), ("500", 0.01)):
        for method in ("GET", "POST"):
            lines.append(f'http_requests_total{{code="{code}",method="{method}"}} {int(tick * 100 * share)}')
    lines.append("# TYPE http_request_duration_seconds histogram")
    total = tick * 100
    for le in BUCKETS:
        lines.append(f'http_request_duration_seconds_bucket{{le="{le}"}} {int(total * min(1.0, le * 4))}')
    lines.append(f'http_request_duration_seconds_bucket{{le="+Inf"}} {total}')
    lines.append(f"http_request_duration_seconds_sum {total * 0.08}")
    lines.append(f"http_request_duration_seconds_count {total}")
    lines.append("# TYPE process_resident_memory_bytes gauge")
    lines.append("process_resident_memory_bytes 52428800")
    for i in range(20):
        lines.append(f"# TYPE app_gauge_{i} gauge")
        lines.append(f"app_gauge_{i} {i}")
    return "\n".join(lines) + "\n"


def serve(ports: list[int], ready: multiprocessing.synchronize.Event) -> None:
    started = time.monotonic()

    async def handler(request: web.Request) -> web.Response:
        tick = int((time.monotonic() - started) * 10) + 1
        return web.Response(text=exposition(tick), content_type="text/plain")

    async def main() -> None:
        runners = []
        for port in ports:
            app = web.Application()
            app.router.add_get("/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


async def run(sources: int, interval: float, seconds: float, exporters: list[int]) -> None:
    scheduler = AsyncIOScheduler()
    scheduler.start()
    metrics = Metrics(CollectorRegistry())
    jobs = SourceJobs(scheduler, metrics)
    polls = 0
    failed = 0

    def count(_: str, samples: Mapping[Measure, Sample]) -> None:
        nonlocal polls, failed
        polls += 1
        if any(s.value is None and "history" not in (s.reason or "") for s in samples.values()):
            failed += 1

    connector = aiohttp.TCPConnector(limit=200, limit_per_host=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        for n in range(sources):
            port = exporters[n % len(exporters)]
            url = SecretUrl(f"http://127.0.0.1:{port}/app{n}/metrics")
            config = ScrapeSource(type="scrape", url=url, interval=f"{interval:g}s", timeout="4s")
            jobs.add(MetricsScrape(f"app{n}", config, session), interval=interval, timeout=4.0)
            jobs.subscribe(f"app{n}", "bench", MEASURES, count)
        await asyncio.sleep(interval)  # the first round starts everything at once; measure after it
        polls = failed = 0
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_before = time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - wall_before
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        await jobs.close()
    scheduler.shutdown(wait=False)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    scheduled = sources / interval
    print(
        f"sources: {sources} at {interval:g}s ({scheduled:.0f} polls/s scheduled), measured over {wall:.1f}s"
    )
    print(f"polls per second: {polls / wall:.1f} ({polls / wall / scheduled:.0%} of the schedule)")
    print(f"failed polls: {failed}")
    per_poll = cpu / max(polls, 1) * 1000
    print(f"CPU of the polling process: {cpu / wall:.0%} of one core ({per_poll:.2f} ms per poll)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of the polling process: {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--exporters", type=int, default=8, help="exporter ports (served by one child process)"
    )
    args = parser.parse_args()
    ports = free_ports(args.exporters)
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=serve, args=(ports, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the fake exporters did not start")
        asyncio.run(run(args.sources, args.interval, args.seconds, ports))
    finally:
        child.terminate()
        child.join(10)


if __name__ == "__main__":
    main()
