"""Sources: everything watchdogd looks at, built from their config by ``build_source``."""

from __future__ import annotations

import aiohttp

from watchdogd.config.models import (
    AlertmanagerSource,
    DockerLogsSource,
    DockerSource,
    ExecSource,
    FileSource,
    HttpSource,
    PostgresSource,
    PrometheusSource,
    RedisSource,
    ScrapeSource,
    SourceConfig,
)
from watchdogd.sources.alertmanager import AlertmanagerAlerts
from watchdogd.sources.base import Measure, Poller, Source
from watchdogd.sources.exec import ExecCommand
from watchdogd.sources.http import HttpProbe
from watchdogd.sources.logfile import file_source
from watchdogd.sources.prometheus import PrometheusQuery
from watchdogd.sources.scrape import MetricsScrape

__all__ = ["Measure", "Poller", "Source", "build_source"]


def build_source(name: str, config: SourceConfig, session: aiohttp.ClientSession) -> Source:
    """The source for a config entry; log sources follow their log from now on.

    The Docker SDK, asyncpg and redis are imported only for the sources that use them:
    a sidecar that scrapes one exporter does not carry them.
    """
    if isinstance(config, PrometheusSource):
        return PrometheusQuery(name, config, session)
    if isinstance(config, ScrapeSource) and config.swarm_service is not None:
        from watchdogd.sources.swarm import SwarmScrape

        return SwarmScrape(name, config, session)
    if isinstance(config, ScrapeSource):
        return MetricsScrape(name, config, session)
    if isinstance(config, HttpSource):
        return HttpProbe(name, config, session)
    if isinstance(config, DockerSource):
        from watchdogd.sources.docker import DockerContainer

        return DockerContainer(name, config)
    if isinstance(config, DockerLogsSource):
        from watchdogd.sources.docker import docker_logs_source

        return docker_logs_source(name, config)
    if isinstance(config, FileSource):
        return file_source(name, config)
    if isinstance(config, PostgresSource):
        from watchdogd.sources.postgres import PostgresProbe

        return PostgresProbe(name, config)
    if isinstance(config, RedisSource):
        from watchdogd.sources.redis import RedisQueue

        return RedisQueue(name, config)
    if isinstance(config, ExecSource):
        return ExecCommand(name, config)
    if isinstance(config, AlertmanagerSource):
        return AlertmanagerAlerts(name, config)
    raise TypeError(f"no source for {type(config).__name__}")
