"""The sequential incidents of ``bench/detect.py``: a sequential rule, a threshold rule and
Prometheus + Alertmanager on the same error step (see that module's docstring).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import Receiver, WatchdogdProcess, verdict
from tests.testbed.prometheus import AlertmanagerServer, PrometheusServer

BEFORE = 0.005
THRESHOLD = 0.05
HISTORY = 60.0
"""Seconds of healthy history the sequential rule learns from before the deploy."""
WINDOW = 10.0
HOLD = 10.0
SETTLE = 2.0
"""Seconds between the deploy's registration and the step (T)."""


@dataclass(frozen=True)
class Incident:
    name: str
    after: float
    target: float
    """Seconds after T the sequential rule's rollback must start by (median of the runs)."""
    wait: float
    """Seconds after T to wait for the watchers."""

    def threshold_limit(self) -> float | None:
        """T + this: when a threshold rule's ratio over WINDOW crosses THRESHOLD, plus ``for``."""
        if self.after <= THRESHOLD:
            return None
        return (THRESHOLD - BEFORE) * WINDOW / (self.after - BEFORE) + HOLD


INCIDENTS = {
    "step20": Incident("0.5% -> 20%", 0.20, 3.0, 45.0),
    "step2": Incident("0.5% -> 2%", 0.02, 60.0, 90.0),
}


def watchdogd_config(exporter: str, hooks: dict[str, str]) -> str:
    return f"""
defaults: {{interval: 1s, window: 1h, grace: 0s, mode: auto}}
sources:
  app: {{type: scrape, url: "http://{exporter}/metrics", timeout: 2s}}
services:
  api-seq:
    rollback:
      steps: [webhook]
      webhook: {{url: "{hooks["api-seq"]}", timeout: 2s, retries: 0}}
    rules:
      - name: errors-sequential
        source: app
        sequential:
          errors: 'http_requests_total{{code=~"5.."}}'
          total: http_requests_total
          bad: 2%
          history: {HISTORY:g}s
        action: rollback
  api-thr:
    rollback:
      steps: [webhook]
      webhook: {{url: "{hooks["api-thr"]}", timeout: 2s, retries: 0}}
    rules:
      - name: error-rate
        source: app
        ratio:
          numerator: 'http_requests_total{{code=~"5.."}}'
          denominator: http_requests_total
          over: {WINDOW:g}s
        condition: "> {THRESHOLD}"
        for: {HOLD:g}s
        action: rollback
"""


def alert_rule() -> dict[str, Any]:
    window = f"{WINDOW:g}s"
    expr = (
        f'sum(rate(http_requests_total{{code=~"5.."}}[{window}])) / sum(rate(http_requests_total[{window}]))'
        f" > {THRESHOLD}"
    )
    return {"name": "app", "rules": [{"alert": "HighErrorRatio", "expr": expr, "for": f"{HOLD:g}s"}]}


def alertmanager_config(hook: str) -> dict[str, Any]:
    route = {"receiver": "rollback", "repeat_interval": "4h", "group_wait": "1s", "group_interval": "1s"}
    return {"route": route, "receivers": [{"name": "rollback", "webhook_configs": [{"url": hook}]}]}


def started(wd: WatchdogdProcess, service: str) -> float | None:
    from bench.detect import parse_time

    status, body = wd.request("GET", "/v1/rollbacks")
    if status != 200:
        return None
    starts = [
        parse_time(i["started_at"])
        for i in body.get("items", [])
        if i.get("service") == service and i.get("started_at")
    ]
    return min(starts) if starts else None


def reasons(wd: WatchdogdProcess, service: str) -> str:
    status, body = wd.request("GET", "/v1/rollbacks")
    if status != 200:
        return ""
    for item in body.get("items", []):
        if item.get("service") == service:
            return "; ".join(str(r.get("message") or r.get("reason") or r) for r in item.get("reasons", []))
    return ""


def run(incident: Incident, workdir: Path) -> dict[str, Any]:
    from bench.detect import Exporter

    workdir.mkdir(parents=True, exist_ok=True)
    exporter = Exporter(after=incident.after)
    receivers = {"api-seq": Receiver(), "api-thr": Receiver(), "peer": Receiver()}
    am = AlertmanagerServer(workdir / "am", config=alertmanager_config(receivers["peer"].url))
    prom: PrometheusServer | None = None
    hooks = {name: r.url for name, r in receivers.items()}
    wd = WatchdogdProcess(workdir, watchdogd_config(exporter.address, hooks))
    try:
        am.start()
        prom = PrometheusServer(
            workdir / "prom",
            [exporter.address],
            scrape_interval="1s",
            evaluation_interval="1s",
            metrics_path="/metrics",
            rule_groups=[alert_rule()],
            alertmanagers=[am.address],
            alert_resend_delay="1s",
        )
        prom.start()
        wd.start()
        prom.wait_targets_up(timeout=60)
        print(f"  warming up {HISTORY + 3:.0f}s (the sequential rule's history)", flush=True)
        time.sleep(HISTORY + 3)
        wd.register("api-seq")
        wd.register("api-thr")
        time.sleep(SETTLE)
        if any(r.arrivals for r in receivers.values()):
            raise RuntimeError("a watcher fired before the incident")
        flip = time.time()
        exporter.flip = flip
        print(f"  incident {incident.name} started (T)", flush=True)
        deadline = time.monotonic() + incident.wait
        expected = [receivers["api-seq"]]
        if incident.threshold_limit() is not None:
            expected += [receivers["api-thr"], receivers["peer"]]
        while time.monotonic() < deadline and not all(r.arrivals for r in expected):
            time.sleep(0.1)
        seq, thr, peer = started(wd, "api-seq"), started(wd, "api-thr"), receivers["peer"].first()
        return {
            "sequential": None if seq is None else seq - flip,
            "threshold": None if thr is None else thr - flip,
            "peer": None if peer is None else peer - flip,
            "evidence": reasons(wd, "api-seq"),
        }
    finally:
        wd.stop()
        if prom is not None:
            prom.stop()
        am.stop()
        for receiver in receivers.values():
            receiver.close()
        exporter.close()


def _fmt(value: float | None, wait: float) -> str:
    return f"T + {value:.2f}s" if value is not None else f"never within {wait:g}s"


def report(incident: Incident, result: dict[str, Any]) -> None:
    limit = incident.threshold_limit()
    limit_text = f"T + {limit:.2f}s" if limit is not None else f"none (the rate never exceeds {THRESHOLD})"
    print(f"{incident.name} at 100 requests/s, 1 s polls; threshold rule's limit {limit_text}")
    print(f"  sequential rule     rollback started {_fmt(result['sequential'], incident.wait)}")
    print(f"  threshold rule      rollback started {_fmt(result['threshold'], incident.wait)}")
    print(f"  Prometheus + AM     webhook at {_fmt(result['peer'], incident.wait)}")
    if result["evidence"]:
        print(f"  evidence: {result['evidence']}")


def summarize(incident: Incident, runs: list[dict[str, Any]]) -> None:
    print(f"{incident.name}: {len(runs)} runs")
    labels = (("sequential", "sequential rule"), ("threshold", "threshold rule"), ("peer", "Prom + AM"))
    for key, label in labels:
        values = sorted(r[key] for r in runs if r[key] is not None)
        missed = len(runs) - len(values)
        if not values:
            print(f"  {label:16} never acted within {incident.wait:g}s")
            continue
        line = (
            f"  {label:16} min/median/max T + {values[0]:.2f} / {statistics.median(values):.2f} /"
            f" {values[-1]:.2f}s"
        )
        if missed:
            line += f"; {missed} runs never acted within {incident.wait:g}s"
        if key == "sequential":
            met = not missed and statistics.median(values) <= incident.target
            line += f" (target: median within {incident.target:g}s: {verdict(met)})"
        print(line)
