"""Sources that follow a Docker Swarm service's tasks, so a rule sees the fleet, not one container.

* ``scrape`` with ``swarm_service``: every poll lists the service's running
  tasks, scrapes each at its own URL (a template naming the task's ``{slot}``,
  ``{task}`` or ``{node}``: tasks on host networking cannot share one port) and
  merges them into one exposition, each task's series labelled
  ``swarm_task="<task id>"``. A rule's ``rate``/``ratio``/``quantile`` then sums
  over the tasks; a replaced task is a new series, so its fresh counters are
  not read as a reset. A task that does not answer is left out of that poll
  (logged); only when none answers is the poll a failure.
* ``docker_logs`` with ``swarm_service``: the service's log stream
  (``docker service logs``: every task, on every node), counted like one
  container's. After a reconnect, lines stamped before the last one seen are
  dropped: a line may be missed then, never counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import structlog
from docker.errors import DockerException, NotFound
from docker.types.daemon import CancellableStream

from watchdogd.config.models import DockerLogsSource, ScrapeSource
from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.sources.base import Measure
from watchdogd.sources.docker import ClientFactory, DockerLogFollower, client_factory
from watchdogd.sources.logs import LogMatcher, LogSource
from watchdogd.sources.promrate import Scrape, SeriesKey
from watchdogd.sources.scrape import MetricsScrape, read_exposition

log = structlog.get_logger("watchdogd.sources.swarm")

TASK_LABEL = "swarm_task"
TIMESTAMP_ROOM = 40


async def running_tasks(api: Any, service: str) -> list[dict[str, Any]]:
    """The service's tasks meant to run and running, by slot; SourceError when there is no such service."""
    try:
        await asyncio.to_thread(api.inspect_service, service)
        tasks = await asyncio.to_thread(api.tasks, filters={"service": service, "desired-state": "running"})
    except NotFound:
        raise SourceError(f"no Swarm service named {service}", "unreachable") from None
    except DockerException as exc:
        raise SourceError(f"cannot reach the Docker engine: {type(exc).__name__}", "unreachable") from exc
    found = [t for t in tasks if (t.get("Status") or {}).get("State") == "running"]
    found.sort(key=lambda t: (t.get("Slot") or 0, str(t.get("ID"))))
    return found


class SwarmScrape(MetricsScrape):
    """A ``scrape`` source over every running task of a Swarm service; see the module docstring."""

    def __init__(
        self,
        name: str,
        config: ScrapeSource,
        session: aiohttp.ClientSession,
        *,
        make_client: ClientFactory | None = None,
    ) -> None:
        super().__init__(name, config, session)
        self.service = config.swarm_service or ""
        self._make_client = make_client or client_factory(config.timeout)
        self._api: Any = None
        self._nodes: dict[str, str] = {}

    async def _client(self) -> Any:
        if self._api is None:
            try:
                client = await asyncio.to_thread(self._make_client)
            except DockerException as exc:
                raise SourceError(f"cannot reach the Docker engine: {type(exc).__name__}") from exc
            self._api = client.api
        return self._api

    async def urls(self) -> dict[str, str]:
        """Each running task's ID and the URL it is scraped at."""
        api = await self._client()
        out: dict[str, str] = {}
        for task in await running_tasks(api, self.service):
            node = str(task.get("NodeID") or "")
            if "{node}" in self.config.url.secret() and node not in self._nodes:
                attrs = await asyncio.to_thread(api.inspect_node, node)
                self._nodes[node] = str((attrs.get("Status") or {}).get("Addr") or "127.0.0.1")
            task_id = str(task.get("ID"))
            out[task_id] = self.config.url.secret().format(
                slot=task.get("Slot") or 0, task=task_id, node=self._nodes.get(node, "")
            )
        return out

    async def fetch(self, measures: Sequence[Measure], at: float) -> Mapping[Measure, Sample]:
        answers, plans, wanted = self._plans(measures, at)
        urls = await self.urls()
        if not urls:
            raise SourceError(f"no running task of Swarm service {self.service}", "unreachable")
        texts = await asyncio.gather(*(self._get(url) for url in urls.values()), return_exceptions=True)
        values: dict[SeriesKey, float] = {}
        duplicates: set[SeriesKey] = set()
        errors: list[str] = []
        for task_id, text in zip(urls, texts, strict=True):
            if isinstance(text, BaseException):
                if not isinstance(text, SourceError):
                    raise text
                errors.append(f"task {task_id[:12]}: {text}")
                continue
            one = await read_exposition(text, wanted, self.max_series)
            for (metric, labels), value in one.values.items():
                key: SeriesKey = (metric, tuple(sorted((*labels, (TASK_LABEL, task_id)))))
                values[key] = value
                if (metric, labels) in one.duplicates:
                    duplicates.add(key)
        if len(errors) == len(urls):
            raise SourceError(f"no task of {self.service} answered: {errors[0]}", "unreachable")
        if errors:
            log.info("swarm_tasks_unscraped", source=self.name, service=self.service, errors=errors)
        if len(values) > self.max_series:
            raise SourceError(f"more than {self.max_series} series over the tasks of {self.service}")
        try:
            self.store.ingest(at, Scrape(values, frozenset(duplicates)), self._horizon(plans))
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        if self.first_at is None:
            self.first_at = at
        for measure, selectors in plans.items():
            answer = self._answer(measure, selectors, at)
            answers[measure] = Sample(at, answer.value, answer.reason)
        return answers

    async def _get(self, url: str) -> str:
        try:
            async with self.session.get(
                url,
                headers=self.headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                if response.status != 200:
                    raise SourceError(f"{url} answered HTTP {response.status}", "http_status")
                body = await response.content.read(self.max_body + 1)
        except TimeoutError as exc:
            raise SourceError(f"{url}: no answer within {self.config.timeout:g}s", "timeout") from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"cannot scrape {url}: {type(exc).__name__}", "unreachable") from exc
        if len(body) > self.max_body:
            raise SourceError(f"{url}: body larger than {self.max_body} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(f"{url}: body is not UTF-8 text") from None


class SwarmLogFollower(DockerLogFollower):
    """Follows ``docker service logs`` of a Swarm service (``container`` is the service's name)."""

    def _follow(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        api = self._client.api
        try:
            spec = api.inspect_service(self.container)["Spec"]
        except NotFound:
            self._set_problem(f"no Swarm service named {self.container}", fatal=False)
            return
        since = self.since
        if self._last_ns is not None:
            since = max(since, float(self._last_ns // 1_000_000_000))
        tty = bool(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("TTY"))
        params = {"follow": True, "stdout": True, "stderr": True, "timestamps": True, "since": int(since)}
        response = api._get(api._url("/services/{0}/logs", self.container), params=params, stream=True)
        # What container.logs(stream=True) returns: close() shuts the socket, ending the read at once.
        self._pump(CancellableStream(api._get_result_tty(True, response, tty), response))


def swarm_logs_source(
    name: str,
    config: DockerLogsSource,
    measures: Sequence[Measure] = (),
    *,
    since: float | None = None,
    make_client: ClientFactory | None = None,
    retry: float = 1.0,
) -> LogSource:
    """A ``docker_logs`` source over every task of ``config.swarm_service``, from ``since`` (default: now)."""
    follower = SwarmLogFollower(
        config.swarm_service or "",
        LogMatcher(),
        config.max_line_bytes,
        since=time.time() if since is None else since,
        make_client=make_client or client_factory(config.timeout),
        retry=retry,
    )
    return LogSource(name, "docker_logs", follower, measures)
