"""Docker: a container's state and stats, and its log stream.

The docker SDK blocks: a poll runs its calls through ``asyncio.to_thread``
and the log stream is read in a background thread, so the event loop never
waits on the engine.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import structlog
from docker.errors import DockerException, NotFound

from watchdogd.clock import now as steady
from watchdogd.config.models import DockerLogsSource, DockerSource
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.sources.base import Measure
from watchdogd.sources.logs import LineBuffer, LogMatcher, LogSource, decode_line

log = structlog.get_logger("watchdogd.sources.docker")

ClientFactory = Callable[[], Any]
"""Makes a ``docker.DockerClient``; called in a worker thread, may raise DockerException."""
STATS_FIELDS = frozenset({"memory_percent", "cpu_percent"})


def client_factory(timeout: float) -> ClientFactory:
    """The engine named by the environment (``DOCKER_HOST``, else the local socket)."""

    def make() -> Any:
        return docker.from_env(timeout=timeout)

    return make


def _engine_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot reach the Docker engine: {text[:200]}"


# --- state and stats -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What one inspect says about a container."""

    id: str
    status: str
    exit_code: int
    restarts: int
    oom_killed: bool
    health: str | None
    """``healthy``, ``unhealthy``, ``starting``; None without a health check."""
    started_at: str

    @property
    def running(self) -> bool:
        return self.status == "running"

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> ContainerState:
        state = attrs.get("State") or {}
        health = state.get("Health") or {}
        return cls(
            id=str(attrs.get("Id", "")),
            status=str(state.get("Status", "")),
            exit_code=int(state.get("ExitCode") or 0),
            restarts=int(attrs.get("RestartCount") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            health=str(health["Status"]) if health.get("Status") else None,
            started_at=str(state.get("StartedAt", "")),
        )


@dataclass(frozen=True, slots=True)
class CpuReading:
    """Cumulative CPU time of a container and of the host, in nanoseconds."""

    container_id: str
    started_at: str
    container_ns: int
    system_ns: int
    cpus: int

    @classmethod
    def of(cls, state: ContainerState, stats: Mapping[str, Any]) -> CpuReading | None:
        cpu = stats.get("cpu_stats") or {}
        usage = cpu.get("cpu_usage") or {}
        system = cpu.get("system_cpu_usage")
        if system is None or usage.get("total_usage") is None:
            return None
        cpus = cpu.get("online_cpus") or len(usage.get("percpu_usage") or ()) or 1
        return cls(state.id, state.started_at, int(usage["total_usage"]), int(system), int(cpus))


def cpu_percent(before: CpuReading | None, after: CpuReading) -> float | None:
    """CPU use between two readings, as ``docker stats`` shows it (100 per busy core)."""
    if before is None or (before.container_id, before.started_at) != (after.container_id, after.started_at):
        return None
    system = after.system_ns - before.system_ns
    used = after.container_ns - before.container_ns
    if system <= 0 or used < 0:
        return None
    return 100.0 * used / system * after.cpus


def memory_percent(stats: Mapping[str, Any]) -> float | None:
    """Memory in use (page cache excluded, as ``docker stats`` does) as % of the limit.

    Docker reports the host's memory as the limit of an unlimited container.
    """
    memory = stats.get("memory_stats") or {}
    usage, limit = memory.get("usage"), memory.get("limit")
    if not usage or not limit:
        return None
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))  # cgroup v1, v2
    if 0 < inactive < usage:
        usage -= inactive
    return 100.0 * float(usage) / float(limit)


class DockerContainer:
    """A container's state: fields ``running``, ``crashed``, ``restarts``, ``oom_killed``,
    ``exit_code``, ``healthy``, ``memory_percent``, ``cpu_percent``.

    One inspect per poll, plus one stats call when a stats field is asked.
    A container that does not exist is ``running`` 0 (it is not running) and
    no data for every other field. ``crashed`` is 1 when the container exited
    non-zero or restarted (restart count or start time changed) since the
    baseline: the container as :meth:`deployed` found it, or else as first
    seen. A container recreated under the name starts a new baseline.
    ``restarts`` and ``exit_code`` are Docker's own. ``cpu_percent`` compares
    with the previous poll's reading, so the first poll has none.
    """

    kind = "docker"

    def __init__(self, name: str, config: DockerSource, make_client: ClientFactory | None = None) -> None:
        self.name = name
        self.config = config
        self._make_client = make_client or client_factory(config.timeout)
        self._client: Any = None
        self._baseline: ContainerState | None = None
        self._cpu: CpuReading | None = None

    async def deployed(self, at: float) -> None:
        """A deploy started at ``at``: the container as it is now is the baseline of ``crashed``.

        When the container cannot be seen now, its next observation is.
        """
        try:
            state, _ = await asyncio.to_thread(self._observe, False)
        except SourceError as exc:
            state = None
            log.warning("docker_baseline_deferred", source=self.name, reason=str(exc))
        self._baseline = state
        log.info(
            "docker_baseline", source=self.name, at=at, restarts=None if state is None else state.restarts
        )

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        fields = {m.expr for m in measures if m.kind == "field"}
        state, stats = await asyncio.to_thread(self._observe, bool(fields & STATS_FIELDS))
        values = self._values(state, stats, fields)
        result: dict[Measure, Sample] = {}
        for measure in measures:
            if measure.kind != "field":
                result[measure] = Sample.missing(at, "a docker source answers fields only")
                continue
            value = values.get(measure.expr, f"unknown docker field '{measure.expr}'")
            result[measure] = Sample.missing(at, value) if isinstance(value, str) else Sample(at, value)
        return result

    def _observe(self, with_stats: bool) -> tuple[ContainerState | None, Mapping[str, Any] | None]:
        """Inspect (and stats) in a worker thread: None for a container that does not exist."""
        try:
            if self._client is None:
                self._client = self._make_client()
            api = self._client.api
            try:
                state = ContainerState.of(api.inspect_container(self.config.container))
            except NotFound:
                return None, None
            stats = None
            if with_stats and state.running:
                try:
                    stats = api.stats(state.id, stream=False, one_shot=True)
                except NotFound:
                    return None, None
        except (DockerException, OSError) as exc:
            raise SourceError(_engine_error(exc)) from exc
        return state, stats

    def _values(
        self, state: ContainerState | None, stats: Mapping[str, Any] | None, fields: set[str]
    ) -> dict[str, float | str]:
        """Each field's value, or why it has none."""
        container = self.config.container
        if state is None:
            self._cpu = None
            missing = f"no container named {container}"
            return {f: 0.0 if f == "running" else missing for f in fields}
        if self._baseline is None or self._baseline.id != state.id:
            self._baseline = state
        base = self._baseline
        restarted = state.restarts > base.restarts or state.started_at != base.started_at
        values: dict[str, float | str] = {
            "running": float(state.running),
            "crashed": float(restarted or (not state.running and state.exit_code != 0)),
            "restarts": float(state.restarts),
            "oom_killed": float(state.oom_killed),
            "exit_code": float(state.exit_code),
        }
        if not state.running:
            values["healthy"] = 0.0
        elif state.health is None:
            values["healthy"] = f"container {container} has no health check"
        elif state.health == "starting":
            values["healthy"] = f"health check of {container} is still starting"
        else:
            values["healthy"] = float(state.health == "healthy")
        if not state.running or stats is None:
            self._cpu = None
            values["memory_percent"] = values["cpu_percent"] = f"container {container} is not running"
            return values
        memory = memory_percent(stats)
        values["memory_percent"] = memory if memory is not None else "no memory figures from Docker"
        reading = CpuReading.of(state, stats)
        if "cpu_percent" in fields and reading is not None:
            cpu = cpu_percent(self._cpu, reading)
            values["cpu_percent"] = cpu if cpu is not None else "CPU % needs a second reading (next poll)"
            self._cpu = reading
        else:
            values["cpu_percent"] = "no CPU figures from Docker"
        return values

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None


# --- log stream ----------------------------------------------------------------------

_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
TIMESTAMP_ROOM = 40
"""Bytes of a line taken by Docker's timestamp prefix, beyond ``max_line_bytes``."""


def split_timestamp(raw: bytes) -> tuple[int | None, bytes]:
    """(nanoseconds since the epoch, the line) of a line Docker prefixed with its RFC 3339 time."""
    space = raw.find(b" ", 0, TIMESTAMP_ROOM)
    head = raw if space < 0 else raw[:space]
    match = _TIMESTAMP.fullmatch(head)
    if match is None:
        return None, raw
    zone = "+00:00" if match[3] == b"Z" else match[3].decode()
    seconds = int(datetime.fromisoformat(match[1].decode() + zone).timestamp())
    fraction = int((match[2] or b"0").ljust(9, b"0"))
    return seconds * 1_000_000_000 + fraction, b"" if space < 0 else raw[space + 1 :]


class DockerLogFollower:
    """Follows a container's log from ``since`` (epoch seconds), in a background thread.

    When the stream ends (the container stopped, restarted, was recreated, or
    the engine went away) it reconnects every ``retry`` seconds from the last
    timestamp seen, dropping what it already counted: older lines, and lines
    of that very timestamp it has seen. A container recreated under the name
    is read from ``since``.
    """

    def __init__(
        self,
        container: str,
        matcher: LogMatcher,
        max_line_bytes: int,
        *,
        since: float,
        make_client: ClientFactory,
        retry: float = 1.0,
        clock: Callable[[], float] = steady,
    ) -> None:
        self.container = container
        self.matcher = matcher
        self.max_line_bytes = max_line_bytes
        self.since = since
        self.retry = retry
        self.clock = clock
        self._make_client = make_client
        self._client: Any = None
        self._attached = False
        self._problem: str | None = None
        self._fatal = False
        self._container_id: str | None = None
        self._last_ns: int | None = None
        self._boundary: Counter[int] = Counter()
        """Hashes of the lines stamped ``_last_ns``: seen, not to be counted again."""
        self._resume_ns: int | None = None
        self._pending: Counter[int] = Counter()
        self._stream: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def problem(self) -> str | None:
        return self._problem

    @property
    def fatal(self) -> bool:
        return self._fatal

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"follow-docker:{self.container}", daemon=True
            )
            self._thread.start()

    def reconnect(self) -> None:
        """Drop the current stream; the follower reconnects as after any interruption."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            _close_stream(stream)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.reconnect()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except (DockerException, OSError) as exc:
                self._set_problem(_engine_error(exc), fatal=True)
                self._client = None
            except Exception:  # the follower must outlive a surprise; the next round retries
                log.exception("docker_log_follow_failed", container=self.container)
            self._stop.wait(self.retry)

    def _set_problem(self, problem: str, *, fatal: bool) -> None:
        if problem != self._problem:
            log.info("docker_log_unavailable", container=self.container, reason=problem)
        self._problem = problem
        self._fatal = fatal

    def _follow(self) -> None:
        """One connection: read until the stream ends."""
        if self._client is None:
            self._client = self._make_client()
        try:
            container = self._client.containers.get(self.container)
        except NotFound:
            self._set_problem(f"no container named {self.container}", fatal=False)
            return
        since: float = self.since
        if container.id != self._container_id:
            if self._container_id is not None:
                log.info("docker_log_container_recreated", container=self.container)
            self._container_id = container.id
            self._last_ns = None
            self._boundary.clear()
        elif self._last_ns is not None:
            # whole seconds: the lines of that second already seen are dropped below
            since = max(since, float(self._last_ns // 1_000_000_000))
        self._pump(container.logs(stream=True, follow=True, timestamps=True, since=since))

    def _pump(self, stream: Any) -> None:
        """Attached to ``stream`` (closing it ends the read at once): read it line by line to its end."""
        with self._lock:
            self._stream = stream
        if self._stop.is_set():
            _close_stream(stream)
        self.connections += 1
        self._attached = True
        self._problem = None
        self._fatal = False
        self._resume_ns = self._last_ns
        self._pending = Counter(self._boundary)
        buffer = LineBuffer(self.max_line_bytes + TIMESTAMP_ROOM)
        try:
            for chunk in stream:
                self._take(buffer.feed(chunk))
            tail = buffer.flush()
            if tail is not None:
                self._take([tail])
        finally:
            with self._lock:
                self._stream = None
            _close_stream(stream)

    def _take(self, lines: list[bytes]) -> None:
        texts: list[str] = []
        for raw in lines:
            stamp, line = split_timestamp(raw)
            if stamp is not None:
                key = hash(line)
                if self._resume_ns is not None:
                    if stamp < self._resume_ns:
                        continue
                    if stamp == self._resume_ns and self._pending[key] > 0:
                        self._pending[key] -= 1
                        continue
                    if stamp > self._resume_ns:
                        self._resume_ns = None
                if self._last_ns is None or stamp > self._last_ns:
                    self._last_ns = stamp
                    self._boundary = Counter((key,))
                elif stamp == self._last_ns:
                    self._boundary[key] += 1
            texts.append(decode_line(line[: self.max_line_bytes]))
        if texts:
            self.matcher.feed(texts, self.clock())


def _close_stream(stream: Any) -> None:
    try:
        stream.close()
    except (DockerException, OSError, AttributeError) as exc:
        log.debug("docker_log_stream_close_failed", error=str(exc))


def docker_logs_source(
    name: str,
    config: DockerLogsSource,
    measures: Sequence[Measure] = (),
    *,
    since: float | None = None,
    make_client: ClientFactory | None = None,
    retry: float = 1.0,
) -> LogSource:
    """A ``docker_logs`` source reading from ``since`` (the deploy's start; default: now)."""
    if config.swarm_service is not None:
        from watchdogd.sources.swarm import swarm_logs_source

        return swarm_logs_source(name, config, measures, since=since, make_client=make_client, retry=retry)
    follower = DockerLogFollower(
        config.container or "",
        LogMatcher(),
        config.max_line_bytes,
        since=time.time() if since is None else since,
        make_client=make_client or client_factory(config.timeout),
        retry=retry,
    )
    return LogSource(name, "docker_logs", follower, measures)
