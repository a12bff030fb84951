"""How soon a scripted incident starts a rollback: watchdogd against Prometheus + Alertmanager.

An exporter on 127.0.0.1 serves an app's request counters (100 requests per
second) whose error ratio flips from 0.5% to 20% at a recorded time T, without
a restart. Two watchers see the same exporter:

- watchdogd (``watchdogd run``): a scrape source, a ratio over the rule's
  window, ``> 0.05`` for the rule's ``for``, mode auto, grace 0, a rollback
  plan of one ``webhook`` step. The rollback's start is its ``started_at``
  from the API (the webhook's arrival is printed too).
- the pipeline a user would otherwise build, from Debian's packages:
  ``prometheus`` with the same alerting rule -> ``prometheus-alertmanager``
  -> a webhook receiver that would start the rollback (its arrival time).

Two settings: the peer's defaults (scrape and evaluation 15 s, ``rate[1m]``,
``for: 1m``, ``group_wait`` 30 s; watchdogd polling every 15 s with the same
rule), then both tuned to 1 s (1 s scrape and evaluation, ``for: 1s``,
``group_wait`` 1 s, a 30 s window). The physical limit of a rule is
T + the time the windowed ratio needs to cross the threshold + ``for``.

Two more incidents pit a ``sequential`` rule against the threshold rule on the
same exporter, with Prometheus + Alertmanager beside them: 0.5% -> 20%
(``step20``) and 0.5% -> 2% (``step2``), 1 s polls, scrapes and evaluations.
One ``watchdogd run`` watches two services on the exporter: ``api-seq`` with
``sequential: {bad: 2%, history: 1m}`` (the healthy rate and dispersion
learned from the minute before the deploy, false rollback 0.1% over the 1 h
window), ``api-thr`` with ``ratio over 10s > 0.05 for 10s`` (the threshold
rule's limit T + 12.3 s); Prometheus runs the same threshold rule. The
deploy is registered after a minute of healthy history, the step follows 2 s
later (T); a rollback's start is its ``started_at``.

Run: ``.venv/bin/python bench/detect.py [--only defaults|tuned|step20|step2] [--runs N]``
(about 6 minutes a run of defaults and tuned, 1.5 to 2.5 minutes a run of step20 or step2).
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Receiver, WatchdogdProcess, verdict
from tests.testbed.exposition import metrics_handler
from tests.testbed.prometheus import AlertmanagerServer, PrometheusServer

RPS = 100.0
BEFORE = 0.005
AFTER = 0.20
THRESHOLD = 0.05
MARGIN = 0.2
"""Seconds of overshoot allowed beyond one evaluation interval (scrape and HTTP time)."""


@dataclass(frozen=True)
class Setting:
    name: str
    interval: float
    window: float
    hold: float
    group_wait: float
    resend_delay: str

    def crossing(self) -> float:
        """Seconds after T at which the ratio over the window first exceeds the threshold.

        ``x`` seconds after the flip the window holds ``x`` seconds at AFTER and
        ``window - x`` at BEFORE, at a constant request rate.
        """
        return (THRESHOLD - BEFORE) * self.window / (AFTER - BEFORE)

    def limit(self) -> float:
        return self.crossing() + self.hold


SETTINGS = {
    # Prometheus' own defaults: a 1m rate, and the rule-level resend delay of 1m.
    "defaults": Setting("defaults", 15.0, 60.0, 60.0, 30.0, "1m"),
    "tuned": Setting("tuned to 1 s", 1.0, 30.0, 1.0, 1.0, "1s"),
}


class Exporter:
    """``/metrics`` with counters that are exact integrals of the request and error rates."""

    def __init__(self, after: float = AFTER) -> None:
        self.t0 = time.time()
        self.flip: float | None = None
        self.after = after
        handler = metrics_handler(lambda: self.exposition(time.time()))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def exposition(self, now: float) -> str:
        up = max(0.0, now - self.t0)
        bad = 0.0 if self.flip is None else max(0.0, now - self.flip)
        total = int(RPS * up)
        errors = min(total, int(RPS * (BEFORE * (up - bad) + self.after * bad)))
        return (
            "# TYPE http_requests_total counter\n"
            f'http_requests_total{{code="200"}} {total - errors}\n'
            f'http_requests_total{{code="500"}} {errors}\n'
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def watchdogd_config(setting: Setting, exporter: str, hook: str) -> str:
    return f"""
defaults: {{interval: {setting.interval:g}s, window: 1h, grace: 0s, mode: auto}}
sources:
  app: {{type: scrape, url: "http://{exporter}/metrics", timeout: 2s}}
services:
  api:
    rollback:
      steps: [webhook]
      webhook: {{url: "{hook}", timeout: 2s, retries: 0}}
    rules:
      - name: error-rate
        source: app
        ratio:
          numerator: 'http_requests_total{{code=~"5.."}}'
          denominator: http_requests_total
          over: {setting.window:g}s
        condition: "> {THRESHOLD}"
        for: {setting.hold:g}s
        action: rollback
"""


def alert_rule(setting: Setting) -> dict[str, Any]:
    window = f"{setting.window:g}s"
    expr = (
        f'sum(rate(http_requests_total{{code=~"5.."}}[{window}])) / sum(rate(http_requests_total[{window}]))'
        f" > {THRESHOLD}"
    )
    return {
        "name": "app",
        "rules": [{"alert": "HighErrorRatio", "expr": expr, "for": f"{setting.hold:g}s"}],
    }


def alertmanager_config(setting: Setting, hook: str) -> dict[str, Any]:
    route: dict[str, Any] = {"receiver": "rollback", "repeat_interval": "4h"}
    if setting.name != "defaults":
        route |= {"group_wait": f"{setting.group_wait:g}s", "group_interval": "1s"}
    return {"route": route, "receivers": [{"name": "rollback", "webhook_configs": [{"url": hook}]}]}


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rollback_started(wd: WatchdogdProcess) -> float | None:
    status, body = wd.request("GET", "/v1/rollbacks")
    if status != 200 or not body.get("items"):
        return None
    starts = [parse_time(i["started_at"]) for i in body["items"] if i.get("started_at")]
    return min(starts) if starts else None


def run(setting: Setting, workdir: Path) -> dict[str, float | None]:
    workdir.mkdir(parents=True, exist_ok=True)
    exporter = Exporter()
    ours, theirs = Receiver(), Receiver()
    am = AlertmanagerServer(workdir / "am", config=alertmanager_config(setting, theirs.url))
    interval = f"{setting.interval:g}s"
    prom: PrometheusServer | None = None
    wd = WatchdogdProcess(workdir, watchdogd_config(setting, exporter.address, ours.url))
    try:
        am.start()
        prom = PrometheusServer(
            workdir / "prom",
            [exporter.address],
            scrape_interval=interval,
            evaluation_interval=interval,
            metrics_path="/metrics",
            rule_groups=[alert_rule(setting)],
            alertmanagers=[am.address],
            alert_resend_delay=setting.resend_delay,
        )
        prom.start()
        wd.start()
        wd.register("api")
        prom.wait_targets_up(timeout=60)
        # Both hold a full window of healthy history before the incident.
        warmup = setting.window + 2 * setting.interval + 5
        print(f"  warming up {warmup:.0f}s", flush=True)
        time.sleep(warmup)
        if ours.arrivals or theirs.arrivals:
            raise RuntimeError("a watcher fired before the incident")
        flip = time.time()
        exporter.flip = flip
        print("  incident started (T)", flush=True)
        deadline = time.monotonic() + setting.limit() + 4 * setting.interval + setting.group_wait + 120
        while time.monotonic() < deadline and not (ours.arrivals and theirs.arrivals):
            time.sleep(0.1)
        started = rollback_started(wd)
        hook, peer = ours.first(), theirs.first()
        return {
            "watchdogd": None if started is None else started - flip,
            "watchdogd_hook": None if hook is None else hook - flip,
            "peer": None if peer is None else peer - flip,
        }
    finally:
        wd.stop()
        if prom is not None:
            prom.stop()
        am.stop()
        ours.close()
        theirs.close()
        exporter.close()


def report(setting: Setting, result: dict[str, float | None]) -> None:
    limit = setting.limit()
    ours, peer = result["watchdogd"], result["peer"]
    print(
        f"{setting.name}: poll/scrape/evaluation {setting.interval:g}s, window {setting.window:g}s, "
        f"for {setting.hold:g}s, group_wait {setting.group_wait:g}s"
    )
    print(
        f"  physical limit      T + {limit:.2f}s (ratio crosses {THRESHOLD} at +{setting.crossing():.2f}s, "
        f"then for {setting.hold:g}s)"
    )
    if ours is None or peer is None:
        print(f"  a watcher never acted: watchdogd {ours}, peer {peer}")
        return
    hook = result["watchdogd_hook"]
    hook_text = f", its webhook at +{hook:.2f}s" if hook is not None else ""
    allowed = setting.interval + MARGIN
    print(
        f"  watchdogd           rollback started T + {ours:.2f}s{hook_text}; overshoot {ours - limit:.2f}s "
        f"(target <= {allowed:g}s: {verdict(ours - limit <= allowed)})"
    )
    print(f"  Prometheus + AM     webhook at T + {peer:.2f}s; overshoot {peer - limit:.2f}s")
    print(f"  ratio peer/watchdogd {peer / ours:.2f}x (target: watchdogd faster: {verdict(ours < peer)})")


def summarize(setting: Setting, runs: list[dict[str, float | None]]) -> None:
    """Several runs of a setting: min / median / max of each watcher, and the worst overshoot."""
    limit = setting.limit()
    ours = sorted(r["watchdogd"] for r in runs if r["watchdogd"] is not None)
    peer = sorted(r["peer"] for r in runs if r["peer"] is not None)
    if not ours or not peer:
        print(f"{setting.name}: a watcher never acted in some runs")
        return
    allowed = setting.interval + MARGIN
    worst = ours[-1] - limit
    print(f"{setting.name}: {len(runs)} runs, physical limit T + {limit:.2f}s")
    print(
        f"  watchdogd  min/median/max T + {ours[0]:.2f} / {statistics.median(ours):.2f} / {ours[-1]:.2f}s;"
        f" worst overshoot {worst:.2f}s (target <= {allowed:g}s in every run: {verdict(worst <= allowed)})"
    )
    print(f"  peer       min/median/max T + {peer[0]:.2f} / {statistics.median(peer):.2f} / {peer[-1]:.2f}s")
    faster = statistics.median(ours) < statistics.median(peer)
    ratio = statistics.median(peer) / statistics.median(ours)
    print(f"  median peer/watchdogd {ratio:.2f}x (watchdogd faster: {verdict(faster)})")


def main() -> None:
    from bench import detect_sequential as seq

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted([*SETTINGS, *seq.INCIDENTS]), help="run one setting")
    parser.add_argument("--runs", type=int, default=1, help="runs per setting (min/median/max when > 1)")
    args = parser.parse_args()
    names = [args.only] if args.only else ["defaults", "tuned", "step20", "step2"]
    results: list[tuple[Setting, list[dict[str, float | None]]]] = []
    incidents: list[tuple[seq.Incident, list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="wdbench-detect-") as tmp:
        for name in names:
            if name in seq.INCIDENTS:
                incident = seq.INCIDENTS[name]
                found = []
                for number in range(args.runs):
                    print(f"running: {incident.name} ({number + 1} of {args.runs})", flush=True)
                    found.append(seq.run(incident, Path(tmp) / f"{name}-{number}"))
                    seq.report(incident, found[-1])
                incidents.append((incident, found))
                continue
            setting = SETTINGS[name]
            runs = []
            for number in range(args.runs):
                print(f"running: {setting.name} ({number + 1} of {args.runs})", flush=True)
                runs.append(run(setting, Path(tmp) / f"{name}-{number}"))
                report(setting, runs[-1])
            results.append((setting, runs))
    print()
    for setting, runs in results:
        if len(runs) == 1:
            report(setting, runs[0])
        else:
            summarize(setting, runs)
    for incident, found in incidents:
        seq.summarize(incident, found)


if __name__ == "__main__":
    main()
