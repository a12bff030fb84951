"""Real ``prometheus`` and ``prometheus-alertmanager`` processes for the tests.

Each server gets its own config file and data directory under a work
directory, listens on a free 127.0.0.1 port and is stopped by PID.

Prometheus 2.42 hands discovered targets to its scrape manager on a fixed 5 s
tick (not configurable), so the first scrape comes 5-10 s after start-up or a
reload, whatever the scrape interval; wait with :meth:`PrometheusServer.wait_targets_up`.
Alertmanagers are discovered the same way, and an alert that fires before that
is dropped and only re-sent after ``--rules.alert.resend-delay`` (set to 1 s here).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml

from tests.testbed.containers import HOST, free_port, http_get

PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"

Sample = dict[str, Any]


class ServerProcess:
    """A server binary started on a free 127.0.0.1 port and stopped by PID."""

    binary: str = ""
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- to override ---------------------------------------------------------
    def write_config(self) -> None:
        raise NotImplementedError

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Write the config, start the binary and wait for ``/-/ready`` (bounded)."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started (pid {self.proc.pid})")
        path = shutil.which(self.binary)
        if path is None:
            raise RuntimeError(f"{self.binary} not found on PATH; run scripts/testbed.sh")
        self.write_config()
        for attempt in range(max(1, attempts)):
            self.port = free_port()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                [path, *self.command(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            try:
                self._wait_ready(timeout)
                return
            except _ExitedEarly:
                text = self.log_text()
                self.stop()
                if "address already in use" in text and attempt + 1 < attempts:
                    continue
                raise RuntimeError(f"{self.name} exited during start-up:\n{text[-4000:]}") from None

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _ExitedEarly
            try:
                status, body = http_get(self.url + self.ready_path, timeout=1.0)
                if status == 200:
                    return
                last = f"{status} {body[:100]}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            time.sleep(0.1)
        text = self.log_text()
        self.stop()
        raise TimeoutError(f"{self.name} not ready within {timeout}s (last: {last}):\n{text[-4000:]}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate by PID, wait (bounded), then kill; returns the exit status."""
        proc, self.proc = self.proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ExitedEarly(Exception):
    pass


class PrometheusError(RuntimeError):
    pass


class PrometheusServer(ServerProcess):
    """``prometheus`` scraping static 127.0.0.1 targets, lifecycle API enabled."""

    binary = PROMETHEUS_BIN

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        job_name: str = "app",
        metrics_path: str = "/cgi-bin/metrics",
        rule_groups: Sequence[dict[str, Any]] | None = None,
        alertmanagers: Sequence[str] = (),
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
        alert_resend_delay: str = "1s",
        name: str = "prometheus",
    ) -> None:
        super().__init__(workdir, name)
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.job_name = job_name
        self.metrics_path = metrics_path
        self.rule_groups = list(rule_groups or [])
        self.alertmanagers = list(alertmanagers)
        self.extra_scrape_configs = list(extra_scrape_configs)
        self.alert_resend_delay = alert_resend_delay
        self.config_path = workdir / "prometheus.yml"
        self.rules_path = workdir / "rules.yml"
        self.data_dir = workdir / "data"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job_name,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets}],
                },
                *self.extra_scrape_configs,
            ],
        }
        if self.rule_groups:
            cfg["rule_files"] = [str(self.rules_path)]
        if self.alertmanagers:
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": self.alertmanagers}]}]}
        return cfg

    def write_config(self) -> None:
        if self.rule_groups:
            self.rules_path.write_text(yaml.safe_dump({"groups": self.rule_groups}))
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self, port: int) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={HOST}:{port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1h",
            # The default (1m) would hold back the first alert for a minute when it
            # fired before the Alertmanager was discovered (see the module note).
            f"--rules.alert.resend-delay={self.alert_resend_delay}",
            "--log.level=warn",
        ]

    def reload(
        self,
        targets: Sequence[str] | None = None,
        rule_groups: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Rewrite the config (new targets and/or rules) and POST ``/-/reload``."""
        if targets is not None:
            self.targets = list(targets)
        if rule_groups is not None:
            self.rule_groups = list(rule_groups)
        self.write_config()
        req = urllib.request.Request(self.url + "/-/reload", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise PrometheusError(f"reload answered {resp.status}")

    # -- HTTP API ----------------------------------------------------------------
    def _api(self, path: str, params: dict[str, str], timeout: float) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                payload = json.loads(exc.read() or b"{}")
        if payload.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {payload}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None, timeout: float = 5.0) -> list[Sample]:
        """Instant query; returns ``data.result`` (a list of ``{metric, value}``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._api("query", params, timeout)
        result: list[Sample] = data["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0, timeout: float = 5.0
    ) -> list[Sample]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        data = self._api("query_range", params, timeout)
        result: list[Sample] = data["result"]
        return result

    async def aquery(self, expr: str, http_timeout: float = 5.0) -> list[Sample]:
        """Instant query with aiohttp, for async tests."""
        client_timeout = aiohttp.ClientTimeout(total=http_timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp,
        ):
            payload = await resp.json()
        if payload.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {payload}")
        result: list[Sample] = payload["data"]["result"]
        return result

    def wait_for(
        self,
        expr: str,
        timeout: float = 20.0,
        predicate: Callable[[list[Sample]], bool] = bool,
        interval: float = 0.5,
    ) -> list[Sample]:
        """Poll ``expr`` until ``predicate(result)`` (default: non-empty), bounded."""
        deadline = time.monotonic() + timeout
        result: list[Sample] = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() + interval > deadline:
                raise TimeoutError(f"{expr!r} gave {result!r} after {timeout}s")
            time.sleep(interval)

    def active_targets(self) -> list[dict[str, Any]]:
        data = self._api("targets", {"state": "active"}, 5.0)
        targets: list[dict[str, Any]] = data["activeTargets"]
        return targets

    def wait_targets_up(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every configured target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.active_targets()
            if targets and all(t.get("health") == "up" for t in targets):
                return targets
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not all up after {timeout}s: {targets!r}")
            time.sleep(0.3)


def prometheus_with_history(workdir: Path, openmetrics: str) -> PrometheusServer:
    """A Prometheus server (not started yet) whose storage holds ``openmetrics``, samples with their
    timestamps, written with ``promtool tsdb create-blocks-from openmetrics``: history recorded as a
    production server would have it. Keep it within the last hour (the server's retention)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool (Debian package prometheus) is missing: run scripts/testbed.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "history.om"
    source.write_text(openmetrics)
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(workdir / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promtool could not write the history: {done.stderr[-2000:]}")
    return PrometheusServer(workdir)


class AlertmanagerServer(ServerProcess):
    """``prometheus-alertmanager`` without clustering, optionally posting to a webhook."""

    binary = ALERTMANAGER_BIN

    def __init__(
        self,
        workdir: Path,
        *,
        webhook_url: str | None = None,
        config: dict[str, Any] | None = None,
        name: str = "alertmanager",
    ) -> None:
        super().__init__(workdir, name)
        self.webhook_url = webhook_url
        self._config = config
        self.config_path = workdir / "alertmanager.yml"
        self.data_dir = workdir / "data"

    def config(self) -> dict[str, Any]:
        if self._config is not None:
            return self._config
        receiver: dict[str, Any] = {"name": "default"}
        if self.webhook_url:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        return {
            "route": {
                "receiver": "default",
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self, port: int) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.data_dir}",
            f"--web.listen-address={HOST}:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Current alerts from ``/api/v2/alerts``."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=timeout) as resp:
            alerts: list[dict[str, Any]] = json.loads(resp.read())
        return alerts

    def wait_alerts(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 20.0,
    ) -> list[dict[str, Any]]:
        """Poll the alerts until ``predicate(alerts)`` (default: any), bounded."""
        deadline = time.monotonic() + timeout
        while True:
            alerts = self.alerts()
            if predicate(alerts):
                return alerts
            if time.monotonic() > deadline:
                raise TimeoutError(f"alerts {alerts!r} after {timeout}s")
            time.sleep(0.3)


def replay_config(path: Path, url: str, rules: str, defaults: str = "") -> Path:
    """A config at ``path`` for ``watchdogd replay``: service ``api`` (rolled back by its container)
    with ``rules``, YAML list items indented by six spaces, on the prometheus source ``prom`` at ``url``."""
    head = f"defaults: {{{defaults}}}\n" if defaults else ""
    path.write_text(
        f"""{head}sources:
  prom: {{type: prometheus, url: "{url}"}}
services:
  api:
    container: api
    rollback: {{steps: [container]}}
    rules:
{rules}"""
    )
    return path


def replay_argv(config: Path, rule: str, start: float, end: float, step: str, *more: str) -> list[str]:
    """``watchdogd replay`` of ``rule`` over the config's Prometheus from ``start`` to ``end``."""
    return [
        "replay", "--config", str(config), "--rule", rule, "--prometheus", "--step", step,
        "--start", f"{start:.0f}", "--end", f"{end:.0f}", *more,
    ]  # fmt: skip
