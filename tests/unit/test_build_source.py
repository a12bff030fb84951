"""Every source type of the config builds its source, with no I/O until it is polled."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from watchdogd.config.loader import load_config_text
from watchdogd.sources import build_source

CONFIG = """
sources:
  prom: {type: prometheus, url: "http://127.0.0.1:9090"}
  app: {type: scrape, url: "http://127.0.0.1:8080/metrics"}
  health: {type: http, url: "http://127.0.0.1:8080/health"}
  box: {type: docker, container: api}
  logs: {type: docker_logs, container: api}
  file: {type: file, path: api.log}
  db: {type: postgres, dsn: "postgresql://app:pw@127.0.0.1:5432/app"}
  queue: {type: redis, url: "redis://127.0.0.1:6379/0", key: [bull:a:wait, bull:a:active]}
"""


async def test_each_type_builds_its_source(tmp_path: Path) -> None:
    config = load_config_text(CONFIG, "watchdogd.yaml", base_dir=tmp_path)
    async with aiohttp.ClientSession() as session:
        built = {name: build_source(name, cfg, session) for name, cfg in config.sources.items()}
        kinds = {name: source.kind for name, source in built.items()}
        for source in built.values():
            await source.close()
    assert kinds == {
        "prom": "prometheus",
        "app": "scrape",
        "health": "http",
        "box": "docker",
        "logs": "docker_logs",
        "file": "file",
        "db": "postgres",
        "queue": "redis",
    }
    assert all(source.name == name for name, source in built.items())
