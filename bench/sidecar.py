"""watchdogd as a sidecar: one service, 6 rules at a 15 s interval, idle.

A fake exporter (the one of ``bench/sources.py``) runs in a child process on
127.0.0.1; ``watchdogd run`` watches it with an open deployment, no incident.
After one warm-up round, the CPU (``/proc/PID/stat``) and memory
(``/proc/PID/status``) of the ``watchdogd run`` process are read for the
measured span; peak RSS is ``VmHWM`` over the process's life.

Run: ``.venv/bin/python bench/sidecar.py [--minutes 5]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import WatchdogdProcess, free_port, measure, verdict
from bench.sources import serve

TARGET_CPU = 0.01
TARGET_RSS_MIB = 80.0
MAX_MINUTES = 60.0
INTERVAL = 15.0


ERRORS = "'http_requests_total{code=~\"5..\"}'"
RATIO = "ratio: {numerator: " + ERRORS + ", denominator: http_requests_total, over: "
RULES = [
    "error-ratio: {" + RATIO + '1m}, condition: "> 0.5", for: 1m, action: rollback}',
    "error-ratio-slow: {" + RATIO + '5m}, condition: "> 0.3", for: 5m, action: rollback}',
    'traffic: {rate: {metric: http_requests_total, over: 1m}, condition: "< 0.001", for: 2m}',
    "latency-p99: {quantile: {metric: http_request_duration_seconds, q: 0.99, over: 1m}, "
    'condition: "> 30", for: 1m}',
    "latency-p50: {quantile: {metric: http_request_duration_seconds, q: 0.5, over: 5m}, "
    'condition: "> 30", for: 5m}',
    'memory: {metric: process_resident_memory_bytes, condition: "> 1e12", for: 1m}',
]


def config_for(port: int) -> str:
    lines = [
        f"defaults: {{interval: {INTERVAL:g}s, window: 2h, grace: 1m, mode: auto}}",
        "sources:",
        f'  app: {{type: scrape, url: "http://127.0.0.1:{port}/metrics", timeout: 5s}}',
        "services:",
        "  api:",
        "    rollback: {steps: [verify]}",
        "    rules:",
    ]
    for rule in RULES:
        name, _, spec = rule.partition(": {")
        lines.append(f"      - {{name: {name}, source: app, {spec}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help=f"measured span (at most {MAX_MINUTES:g})")
    args = parser.parse_args()
    seconds = max(0.1, min(args.minutes, MAX_MINUTES)) * 60
    port = free_port()
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=serve, args=([port], ready), daemon=True)
    child.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the fake exporter did not start")
        with tempfile.TemporaryDirectory(prefix="wdbench-sidecar-") as tmp:
            wd = WatchdogdProcess(Path(tmp), config_for(port), log_level="info")
            wd.start()
            try:
                wd.register("api")
                time.sleep(INTERVAL + 2)  # one poll with the deployment open
                usage = measure(wd.pid, seconds, every=INTERVAL)
                status, body = wd.request("GET", "/v1/rollbacks")
            finally:
                wd.stop()
    finally:
        child.terminate()
        child.join(10)
    rollbacks = len(body.get("items", [])) if status == 200 and isinstance(body, dict) else "?"
    print(
        f"one service, {len(RULES)} rules at {INTERVAL:g}s, idle, "
        f"measured over {usage.seconds:.0f}s (rollbacks: {rollbacks})"
    )
    print(
        f"CPU   {usage.share:.2%} of one core ({usage.cpu:.2f} s of CPU) "
        f"(target < 1%: {verdict(usage.share < TARGET_CPU)})"
    )
    print(
        f"RSS   {usage.rss_mib:.1f} MiB at the end, peak {usage.peak_mib:.1f} MiB "
        f"(target < {TARGET_RSS_MIB:g} MiB: {verdict(usage.peak_mib < TARGET_RSS_MIB)})"
    )


if __name__ == "__main__":
    main()
