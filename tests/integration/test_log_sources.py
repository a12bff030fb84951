"""The log sources against real containers and files: counts, reconnects, rotation, bad input."""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
from prometheus_client import CollectorRegistry

from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import PRISMA_LOG_LINE, AppBehaviour
from watchdogd.config.models import DockerLogsSource, FileSource
from watchdogd.sources.base import Measure, Poller
from watchdogd.sources.docker import DockerLogFollower, docker_logs_source
from watchdogd.sources.logfile import FileFollower, file_source
from watchdogd.sources.logs import LogMatcher, LogSource
from watchdogd.telemetry import Metrics, source_errors

pytestmark = pytest.mark.integration

PRISMA = r"PrismaClient\w*Error"
WINDOW = Measure("count", PRISMA, over=60)
SINCE_POLL = Measure("count", PRISMA)
SILENCE = Measure("absence", "SystemGate")
ALL = [WINDOW, SINCE_POLL, SILENCE]


@pytest.fixture
async def sources() -> AsyncIterator[list[LogSource]]:
    """Sources a test made; closed (their threads stopped) after it."""
    made: list[LogSource] = []
    yield made
    for source in made:
        await source.close()


async def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


async def values(source: LogSource, measures: list[Measure] = ALL) -> list[float | None]:
    samples = await source.fetch(measures, time.time())
    return [samples[m].value for m in measures]


# --- docker_logs -----------------------------------------------------------------------


def follow_container(sources: list[LogSource], name: str, since: float, **kwargs: Any) -> LogSource:
    config = DockerLogsSource(type="docker_logs", container=name)
    source = docker_logs_source("logs", config, ALL, since=since, retry=0.1, **kwargs)
    sources.append(source)
    source.start()
    return source


def follower(source: LogSource) -> DockerLogFollower:
    assert isinstance(source.follower, DockerLogFollower)
    return source.follower


async def test_container_errors_are_counted(app_container: Any, sources: list[LogSource]) -> None:
    since = time.time() - 1
    app = app_container("v2", AppBehaviour(log_every=0.1))
    source = follow_container(sources, app.name, since)
    await wait_for(lambda: source.matcher.total(PRISMA) >= 5, what="five Prisma errors counted")
    window, since_poll, silence = await values(source)
    assert window is not None and window >= 5
    assert since_poll == window  # the first poll counts everything since the start
    assert silence == 0
    assert source.recent_matches(PRISMA)[-1] == PRISMA_LOG_LINE[:300]
    await asyncio.to_thread(app.container.stop, timeout=5)
    await asyncio.sleep(0.5)
    expected = app.logs().count("PrismaClientKnownRequestError")
    await wait_for(lambda: source.matcher.total(PRISMA) == expected, what=f"{expected} errors counted")
    _, since_poll, _ = await values(source)
    assert since_poll == expected - window


async def test_lines_before_since_are_not_counted(app_container: Any, sources: list[LogSource]) -> None:
    app = app_container("v2", AppBehaviour(log_every=0.1))
    app.wait_logs("PrismaClientKnownRequestError")
    await asyncio.sleep(0.5)
    since = time.time()
    source = follow_container(sources, app.name, since)
    await wait_for(lambda: source.follower.attached, what="attached")
    await asyncio.to_thread(app.container.stop, timeout=5)
    await asyncio.sleep(0.5)
    raw = await asyncio.to_thread(app.container.logs, timestamps=True, since=since)
    expected = raw.decode().count("PrismaClientKnownRequestError")
    total = app.logs().count("PrismaClientKnownRequestError")
    await wait_for(lambda: source.matcher.total(PRISMA) == expected, what=f"{expected} errors counted")
    assert expected < total


async def test_reconnects_do_not_count_a_line_twice(app_container: Any, sources: list[LogSource]) -> None:
    since = time.time() - 1
    app = app_container("v2", AppBehaviour(log_every=0.05))
    source = follow_container(sources, app.name, since)
    await wait_for(lambda: source.matcher.total(PRISMA) >= 3, what="first errors")
    # dropped connections, each resuming within a second already partly read
    for _ in range(3):
        before = follower(source).connections
        follower(source).reconnect()
        await wait_for(partial(lambda b: follower(source).connections > b, before), what="reconnected")
        await asyncio.sleep(0.3)
    # the container restarted: the stream ends and resumes on the same log
    await asyncio.to_thread(app.container.restart, timeout=5)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(app.container.stop, timeout=5)
    await asyncio.sleep(0.5)
    expected = app.logs().count("PrismaClientKnownRequestError")
    assert follower(source).connections >= 5
    await wait_for(lambda: source.matcher.total(PRISMA) >= expected, what=f"{expected} errors counted")
    await asyncio.sleep(0.5)
    assert source.matcher.total(PRISMA) == expected


async def test_missing_then_recreated_container(
    app_container: Any, container_registry: ContainerRegistry, sources: list[LogSource]
) -> None:
    name = container_registry.name("api")
    source = follow_container(sources, name, time.time() - 1)
    await wait_for(lambda: source.follower.problem is not None, what="a problem reported")
    samples = await source.fetch(ALL, time.time())
    assert all(s.value is None and s.reason == f"no container named {name}" for s in samples.values())

    first = app_container(
        "v2", AppBehaviour(log_every=0.1, log_line="PrismaClientKnownRequestError from A"), name=name
    )
    await wait_for(lambda: source.matcher.total(PRISMA) >= 3, what="errors of the first container")
    await asyncio.to_thread(first.container.remove, force=True)
    a_count = first_count = source.matcher.total(PRISMA)
    second = app_container(
        "v2", AppBehaviour(log_every=0.1, log_line="PrismaClientKnownRequestError from B"), name=name
    )
    await wait_for(
        lambda: source.matcher.total(PRISMA) >= first_count + 3, what="errors of the new container"
    )
    assert source.recent_matches(PRISMA)[-1].endswith("from B")
    await asyncio.to_thread(second.container.stop, timeout=5)
    await asyncio.sleep(0.5)
    b_count = second.logs().count("from B")
    await wait_for(lambda: source.matcher.total(PRISMA) == a_count + b_count, what="every line once")


async def test_docker_logs_engine_down_is_a_source_error(sources: list[LogSource], tmp_path: Path) -> None:
    url = f"unix://{tmp_path / 'no-engine.sock'}"
    source = follow_container(
        sources, "api", time.time(), make_client=lambda: docker.DockerClient(base_url=url)
    )
    await wait_for(lambda: source.follower.problem is not None, what="a problem reported")
    metrics = Metrics(CollectorRegistry())
    sample = (await Poller(source, 2.0, metrics).poll([WINDOW], time.time()))[WINDOW]
    assert sample.value is None and (sample.reason or "").startswith("cannot reach the Docker engine")
    assert source_errors(metrics.registry, "logs") == 1


# --- file -------------------------------------------------------------------------------


def follow_file(sources: list[LogSource], path: Path, max_line_bytes: int = 65536) -> LogSource:
    config = FileSource(type="file", path=path, max_line_bytes=max_line_bytes)
    source = file_source("logs", config, ALL, interval=0.05)
    sources.append(source)
    source.start()
    return source


def append(path: Path, text: str | bytes, times: int = 1) -> None:
    """Appends ``text`` ``times`` over, one write each (nothing big is built in memory)."""
    data = text.encode() if isinstance(text, str) else text
    with path.open("ab") as fh:
        for _ in range(times):
            fh.write(data)


ERR = "PrismaClientKnownRequestError: boom\n"
OK = "GET /health 200\n"


async def test_file_counts_new_lines_only(tmp_path: Path, sources: list[LogSource]) -> None:
    path = tmp_path / "api.log"
    path.write_text(ERR * 10)  # before the deploy: not counted
    source = follow_file(sources, path)
    await wait_for(lambda: source.follower.attached, what="attached")
    append(path, ERR + OK + ERR)
    await wait_for(lambda: source.matcher.total(PRISMA) == 2, what="two new errors")
    assert await values(source) == [2, 2, 0]
    append(path, "SystemGate: sync done\n")
    await wait_for(lambda: source.matcher.lines == 4, what="four lines")
    assert await values(source) == [2, 0, 1]


async def test_file_missing_until_it_appears(tmp_path: Path, sources: list[LogSource]) -> None:
    path = tmp_path / "later.log"
    source = follow_file(sources, path)
    await wait_for(lambda: source.follower.problem is not None, what="a problem reported")
    sample = (await source.fetch([WINDOW], time.time()))[WINDOW]
    assert sample.value is None and sample.reason == f"no such file: {path}"
    path.write_text(ERR * 3)  # a file that appears is read from its start
    await wait_for(lambda: source.matcher.total(PRISMA) == 3, what="three errors")
    assert (await source.fetch([WINDOW], time.time()))[WINDOW].value == 3


async def test_file_rotated_by_rename(tmp_path: Path, sources: list[LogSource]) -> None:
    path = tmp_path / "api.log"
    path.write_text("")
    source = follow_file(sources, path)
    await wait_for(lambda: source.follower.attached, what="attached")
    append(path, ERR * 2)
    await wait_for(lambda: source.matcher.total(PRISMA) == 2, what="two errors")
    os.rename(path, tmp_path / "api.log.1")
    append(tmp_path / "api.log.1", ERR + "PrismaClientKnownRequestError unterminated")  # late writes
    path.write_text(ERR * 3)
    await wait_for(lambda: source.matcher.total(PRISMA) == 7, what="seven errors")
    append(path, ERR)
    await wait_for(lambda: source.matcher.total(PRISMA) == 8, what="eight errors")
    await asyncio.sleep(0.2)
    assert source.matcher.total(PRISMA) == 8


async def test_file_truncated(tmp_path: Path, sources: list[LogSource]) -> None:
    path = tmp_path / "api.log"
    path.write_text("")
    source = follow_file(sources, path)
    await wait_for(lambda: source.follower.attached, what="attached")
    append(path, ERR * 5 + OK * 20)
    await wait_for(lambda: source.matcher.total(PRISMA) == 5, what="five errors")
    path.write_text(ERR * 2)  # truncate in place (copytruncate), then shorter content
    await wait_for(lambda: source.matcher.total(PRISMA) == 7, what="seven errors")
    await asyncio.sleep(0.2)
    assert source.matcher.total(PRISMA) == 7


async def test_file_deleted_and_recreated(tmp_path: Path, sources: list[LogSource]) -> None:
    path = tmp_path / "api.log"
    path.write_text("")
    source = follow_file(sources, path)
    await wait_for(lambda: source.follower.attached, what="attached")
    append(path, ERR)
    await wait_for(lambda: source.matcher.total(PRISMA) == 1, what="one error")
    path.unlink()
    await wait_for(lambda: source.follower.problem is not None, what="deletion seen")
    # once read, a deleted file is silence, not "no data"
    assert (await source.fetch([WINDOW], time.time()))[WINDOW].value == 1
    path.write_text(ERR * 4)
    await wait_for(lambda: source.matcher.total(PRISMA) == 5, what="five errors")
    assert source.follower.problem is None


async def test_file_huge_line_is_cut_and_invalid_utf8_replaced(
    tmp_path: Path, sources: list[LogSource]
) -> None:
    path = tmp_path / "api.log"
    path.write_text("")
    source = follow_file(sources, path, max_line_bytes=1024)
    await wait_for(lambda: source.follower.attached, what="attached")
    marker = Measure("count", "AFTER-THE-CUT", over=60)
    source.watch([marker])
    tracemalloc.start()
    try:
        # 20 MB on one line: its start is matched, what lies past the cut is not
        append(path, b"PrismaClientKnownRequestError ")
        append(path, b"x" * 100_000, times=200)
        append(path, b" AFTER-THE-CUT\n")
        append(path, b"\xff\xfe PrismaClientKnownRequestError \xc3\x28 bad bytes\n" + OK.encode())
        await wait_for(lambda: source.matcher.lines == 3, timeout=10, what="three lines")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    assert source.matcher.total(PRISMA) == 2
    assert source.matcher.total("AFTER-THE-CUT") == 0
    evidence = source.recent_matches(PRISMA)
    assert len(evidence[0]) == 300
    assert evidence[1] == "\ufffd\ufffd PrismaClientKnownRequestError \ufffd( bad bytes"


async def test_file_100k_lines_in_bounded_memory(tmp_path: Path, sources: list[LogSource]) -> None:
    path = tmp_path / "api.log"
    path.write_text("")
    source = follow_file(sources, path)
    await wait_for(lambda: source.follower.attached, what="attached")
    block = (ERR + OK) * 1000
    append(path, block, times=50)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        await wait_for(lambda: source.matcher.lines == 100_000, timeout=20, what="100k lines read")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 5  # neither the file nor its lines are held
    assert source.matcher.total(PRISMA) == 50_000
    assert source.matcher.buckets(PRISMA) <= 63
    assert (await source.fetch([WINDOW], time.time()))[WINDOW].value == 50_000


def test_lines_written_to_a_renamed_file_before_the_new_one_appears_are_counted(tmp_path: Path) -> None:
    # logrotate renames the file; the application appends to the old one until it reopens
    path = tmp_path / "api.log"
    path.write_text("")
    follower = FileFollower(path, LogMatcher(), 65536)
    matcher = follower.matcher
    matcher.watch(PRISMA)
    follower.step()
    append(path, ERR * 2)
    follower.step()
    os.rename(path, tmp_path / "api.log.1")
    follower.step()  # nothing at the path yet
    append(tmp_path / "api.log.1", ERR)  # a late write
    path.write_text(ERR * 3)
    follower.step()
    assert matcher.total(PRISMA) == 6
    assert follower.problem is None
