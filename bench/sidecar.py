"""watchdogd as a sidecar, idle: the CPU and memory of the ``watchdogd run`` process.

Default: one service, 6 rules at a 15 s interval on one scrape source. A fake
exporter (the one of ``bench/sources.py``) runs in a child process on
127.0.0.1; ``watchdogd run`` watches it with an open deployment, no incident.

``--examples``: every ``config/examples/*.yaml`` in turn, as its own sidecar.
The example's ``server``, ``state`` and ``logging`` are replaced (a free
127.0.0.1 port with the bench's tokens file, SQLite state in the temp dir, info
logs as JSON), ``backups.dir`` moves to the temp dir, the rest is kept, and its
sources answer as in production where the test bed can, on 127.0.0.1 only:
``prometheus`` sources query a real Prometheus (``/usr/bin/prometheus``, own
config and data dir in the temp dir) scraping the fake exporter every 5 s once
per ``job`` label the example's queries name; ``scrape`` and ``http`` sources
hit the fake exporter (same path: it answers any GET); ``postgres`` sources and
service databases use the test bed's PostgreSQL (127.0.0.1:5432, database
``test``); ``redis`` sources and purges 127.0.0.1:6379; ``docker``,
``docker_logs`` and ``exec`` sources are left as written (the local engine; a
container or a working directory the test bed does not have is what they see).
Notification targets and rollback webhooks post to a local sink. Every service
gets an open deployment through the API. An example that cannot start is
reported with its reason and skipped; no figure is made up for it.

After one warm-up interval, the CPU (``/proc/PID/stat``) and memory
(``/proc/PID/status``) of the ``watchdogd run`` process are read for the
measured span; peak RSS is ``VmHWM`` over the process's life. Targets (issue
25): under 0.5% of one core and under 50 MiB of peak RSS.

The interpreter: ``--python PATH`` (default: this one), always started as
``-m watchdogd`` from the repository root, so the working tree's code runs.
``--runtime-venv DIR`` creates DIR, when it holds no python yet, as a venv with
only the runtime dependencies (``python -m venv DIR``, ``DIR/bin/pip install
<repo root>``: none of the test or dev extras) and uses its python. A sidecar
image installs the package and its runtime dependencies; the development venv
also holds the test tools (schemathesis brings rich and pygments, playwright
brings greenlet), which structlog imports when they are present: about 8 MiB
that a deployed sidecar does not carry.

Run: ``.venv/bin/python bench/sidecar.py [--minutes 5] [--runtime-venv /tmp/wd-runtime-venv]
[--examples]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, Receiver, Usage, WatchdogdProcess, free_port, measure, verdict
from bench.sources import serve
from tests.testbed.prometheus import PrometheusServer
from watchdogd.config import load_config
from watchdogd.errors import ConfigError

TARGET_CPU = 0.005
TARGET_RSS_MIB = 50.0
MAX_MINUTES = 60.0
INTERVAL = 15.0
EXAMPLES = ROOT / "config" / "examples"
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"
PROMETHEUS_SCRAPE = "5s"
REPLACED = ("server", "state", "logging")


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


# --- the interpreter ---------------------------------------------------------------------


def runtime_venv(folder: Path) -> str:
    """The python of ``folder``, made a venv with only the runtime dependencies if it has none yet."""
    python = folder / "bin" / "python"
    if not python.exists():
        print(f"creating {folder}: a venv with the runtime dependencies only", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True)
    return str(python)


PROBE = """
import importlib.metadata as m, json, re, sys, watchdogd
names = json.loads(sys.argv[1])
found = []
for name in names:
    try:
        m.distribution(name)
    except m.PackageNotFoundError:
        continue
    found.append(name)
print(json.dumps({"version": sys.version.split()[0], "code": watchdogd.__file__, "extras": found}))
"""


def describe_interpreter(python: str) -> str:
    """Which interpreter runs the daemon, which code it runs, and whether it holds test or dev tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = sorted(
        {
            re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)  # type: ignore[union-attr]
            for group in project["optional-dependencies"].values()
            for requirement in group
        }
    )
    out = subprocess.run(
        [python, "-c", PROBE, json.dumps(extras)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    code = Path(info["code"]).parent
    where = "the working tree" if code == ROOT / "watchdogd" else "NOT the working tree"
    found = info["extras"]
    kind = (
        "runtime-only install (no test or dev extra)"
        if not found
        else f"NOT a runtime-only install (also holds {', '.join(found)})"
    )
    return f"interpreter: {python} (Python {info['version']}), code: {code} ({where}); {kind}"


# --- local servers -------------------------------------------------------------------------


@contextlib.contextmanager
def fake_exporter() -> Iterator[int]:
    """The fake exporter of ``bench/sources.py`` in a child process; yields its port."""
    port = free_port()
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=serve, args=([port], ready), daemon=True)
    child.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the fake exporter did not start")
        yield port
    finally:
        child.terminate()
        child.join(10)


def prometheus_jobs(paths: list[Path]) -> list[str]:
    """The ``job`` labels the examples' rule queries name (templates expanded)."""
    jobs: set[str] = set()
    for path in paths:
        try:
            config = load_config(path)
        except ConfigError:
            continue  # reported when the example's turn comes
        for service in config.services.values():
            for rule in service.rules:
                jobs.update(re.findall(r'\bjob="([^"]+)"', rule.query or ""))
    return sorted(jobs) or ["app"]


def start_prometheus(workdir: Path, exporter: str, jobs: list[str]) -> PrometheusServer:
    """A real Prometheus scraping the fake exporter every 5 s once per job (paths /JOB/metrics)."""
    first, *others = jobs
    server = PrometheusServer(
        workdir,
        [exporter],
        scrape_interval=PROMETHEUS_SCRAPE,
        evaluation_interval=PROMETHEUS_SCRAPE,
        job_name=first,
        metrics_path=f"/{first}/metrics",
        extra_scrape_configs=[
            {"job_name": job, "metrics_path": f"/{job}/metrics", "static_configs": [{"targets": [exporter]}]}
            for job in others
        ],
    )
    server.start()
    server.wait_targets_up(timeout=60)
    return server


# --- an example, made local ------------------------------------------------------------------


@dataclass(frozen=True)
class Local:
    exporter: str  # 127.0.0.1:PORT
    prometheus: str  # http://127.0.0.1:PORT
    sink: str  # http://127.0.0.1:PORT/hook
    workdir: Path


def _set(node: dict[str, Any], key: str, value: str) -> None:
    """``key`` set inline, its ``_file`` / ``_env`` forms dropped."""
    node.pop(f"{key}_file", None)
    node.pop(f"{key}_env", None)
    node[key] = value


def _moved(url: str, base: str) -> str:
    """``url`` with the scheme and host:port of ``base``, path and query kept."""
    parts, to = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((to.scheme, to.netloc, parts.path, parts.query, ""))


def _absolute_files(node: Any, folder: Path) -> Any:
    """A copy (a mapping shared through a YAML anchor copied at each place) with the relative paths of
    ``X_file`` keys (secrets read from files) taken from the example's folder."""
    if isinstance(node, list):
        return [_absolute_files(item, folder) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if str(key).endswith("_file") and isinstance(value, str):
            value = str(folder / value)  # an absolute path stays as it is
        elif str(key).endswith("_file") and isinstance(value, dict):
            value = {k: str(folder / v) if isinstance(v, str) else v for k, v in value.items()}
        out[key] = _absolute_files(value, folder)
    return out


def adapt(data: dict[str, Any], folder: Path, local: Local) -> str:
    """The example without server/state/logging, its endpoints local, as YAML text."""
    data = _absolute_files({k: v for k, v in data.items() if k not in REPLACED}, folder)
    for source in (data.get("sources") or {}).values():
        kind = source.get("type")
        if kind == "prometheus":
            _set(source, "url", local.prometheus)
        elif kind in ("scrape", "http"):
            _set(source, "url", _moved(source.get("url", "/"), f"http://{local.exporter}"))
        elif kind == "postgres":
            _set(source, "dsn", POSTGRES_DSN)
        elif kind == "redis":
            _set(source, "url", _moved(source.get("url", "/0"), REDIS))
    for target in data.get("notify") or []:
        _set(target, "url", local.sink)
    for service in (data.get("services") or {}).values():
        if service.get("database"):
            _set(service["database"], "dsn", POSTGRES_DSN)
        rollback = service.get("rollback") or {}
        if rollback.get("webhook"):
            _set(rollback["webhook"], "url", local.sink)
        if rollback.get("redis_purge"):
            _set(rollback["redis_purge"], "url", _moved(rollback["redis_purge"].get("url", "/0"), REDIS))
    if isinstance(data.get("backups"), dict):
        data["backups"]["dir"] = str(local.workdir / "backups")
    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class Row:
    name: str
    services: int
    rules: int
    usage: Usage
    states: str
    blind: list[str]
    rollbacks: int | str
    posts: int

    @property
    def met(self) -> tuple[bool, bool]:
        return self.usage.share < TARGET_CPU, self.usage.peak_mib < TARGET_RSS_MIB


def _rule_states(wd: WatchdogdProcess) -> tuple[str, list[str]]:
    """How many rules are in each state, and why each rule without data has none."""
    status, body = wd.request("GET", "/v1/deployments")
    if status != 200 or not isinstance(body, dict):
        return "?", []
    rules = [(item["service"], rule) for item in body.get("items", []) for rule in item.get("rules", [])]
    states = Counter(rule["state"] for _, rule in rules)
    blind = [
        f"{service}/{rule['name']}: {(rule.get('reason') or '?')[:120]}"
        for service, rule in rules
        if rule["state"] == "no_data"
    ]
    return ", ".join(f"{state} {count}" for state, count in sorted(states.items())) or "-", blind


def _rollbacks(wd: WatchdogdProcess) -> int | str:
    status, body = wd.request("GET", "/v1/rollbacks")
    return len(body.get("items", [])) if status == 200 and isinstance(body, dict) else "?"


def run_example(path: Path, local: Local, python: str, seconds: float, sink: Receiver) -> Row:
    """One example as a sidecar: started, every service deployed, measured; RuntimeError if it cannot."""
    data = yaml.safe_load(path.read_text())
    local.workdir.mkdir(parents=True)
    wd = WatchdogdProcess(local.workdir, adapt(data, path.parent, local), log_level="info", python=python)
    (local.workdir / "adapted.yaml").write_text(wd.body)  # what watchdogd runs, less server/state/logging
    try:
        config = load_config(local.workdir / "adapted.yaml")
    except ConfigError as exc:
        raise RuntimeError(f"the adapted config does not load: {exc}") from None
    rules = sum(len(service.rules) for service in config.services.values())
    wd.start()
    try:
        for name, service in config.services.items():
            # A service with a container: its previous image is the one watchdogd sees running (none
            # here), so the request leaves it out, as a pipeline does; naming one it never saw is refused.
            has_container = service.container or service.compose or service.swarm_service
            wd.register(name, previous_image=None if has_container else "app:v1")
        time.sleep(config.defaults.interval + 2)  # one poll with the deployments open
        before = len(sink.arrivals)
        usage = measure(wd.pid, seconds, every=5.0)
        posts = len(sink.arrivals) - before
        (states, blind), rollbacks = _rule_states(wd), _rollbacks(wd)
        if wd.process is not None and wd.process.poll() is not None:
            raise RuntimeError(f"watchdogd exited with {wd.process.returncode}:\n{wd.log()}")
    finally:
        wd.stop()
    return Row(path.stem, len(config.services), rules, usage, states, blind, rollbacks, posts)


def examples(python: str, seconds: float) -> None:
    paths = sorted(EXAMPLES.glob("*.yaml"))
    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    with (
        fake_exporter() as port,
        tempfile.TemporaryDirectory(prefix="wdbench-sidecar-") as tmp,
        contextlib.closing(Receiver()) as sink,
    ):
        exporter = f"127.0.0.1:{port}"
        jobs = prometheus_jobs(paths)
        prometheus = start_prometheus(Path(tmp) / "prometheus", exporter, jobs)
        try:
            print(f"Prometheus {prometheus.url} scraping jobs {', '.join(jobs)} every {PROMETHEUS_SCRAPE}")
            for path in paths:
                local = Local(exporter, prometheus.url, sink.url, Path(tmp) / path.stem)
                print(f"{path.name}: measuring {seconds:.0f}s ...", flush=True)
                try:
                    rows.append(run_example(path, local, python, seconds, sink))
                except RuntimeError as exc:
                    lines = str(exc).strip().splitlines()
                    lines = lines if len(lines) < 5 else lines[:1] + lines[-3:]
                    skipped.append((path.name, " / ".join(lines)))
                    print(f"{path.name}: cannot run here: {skipped[-1][1]}", flush=True)
        finally:
            prometheus.stop()
    print_table(rows, skipped, seconds)


def print_table(rows: list[Row], skipped: list[tuple[str, str]], seconds: float) -> None:
    print()
    print(f"each example idle with every service deployed, measured over {seconds:.0f}s after one interval")
    head = ("config", "services", "rules", "CPU", "RSS end", "peak RSS", "verdict", "rule states", "notes")
    lines = [head]
    for row in rows:
        cpu_met, rss_met = row.met
        lines.append(
            (
                row.name,
                str(row.services),
                str(row.rules),
                f"{row.usage.share:.2%}",
                f"{row.usage.rss_mib:.1f} MiB",
                f"{row.usage.peak_mib:.1f} MiB",
                f"CPU {verdict(cpu_met)}, RSS {verdict(rss_met)}",
                row.states,
                f"rollbacks {row.rollbacks}, posts {row.posts}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for row in rows:
        for why in row.blind:
            print(f"{row.name}: no data: {why}")
    for name, reason in skipped:
        print(f"{name}: not measured: {reason}")
    every_cpu = bool(rows) and all(row.met[0] for row in rows)
    every_rss = bool(rows) and all(row.met[1] for row in rows)
    print(
        f"{len(rows)} of {len(rows) + len(skipped)} examples measured; "
        f"CPU < {TARGET_CPU:.1%} of one core in each: {verdict(every_cpu)}; "
        f"peak RSS < {TARGET_RSS_MIB:g} MiB in each: {verdict(every_rss)}"
        + ("" if not skipped else " (the ones not measured are not counted as met)")
    )


# --- the default: one service --------------------------------------------------------------


def one_service(python: str, seconds: float) -> None:
    with fake_exporter() as port, tempfile.TemporaryDirectory(prefix="wdbench-sidecar-") as tmp:
        wd = WatchdogdProcess(Path(tmp), config_for(port), log_level="info", python=python)
        wd.start()
        try:
            wd.register("api")
            time.sleep(INTERVAL + 2)  # one poll with the deployment open
            usage = measure(wd.pid, seconds, every=INTERVAL)
            rollbacks = _rollbacks(wd)
        finally:
            wd.stop()
    print(
        f"one service, {len(RULES)} rules at {INTERVAL:g}s, idle, "
        f"measured over {usage.seconds:.0f}s (rollbacks: {rollbacks})"
    )
    print(
        f"CPU   {usage.share:.2%} of one core ({usage.cpu:.2f} s of CPU) "
        f"(target < {TARGET_CPU:.1%}: {verdict(usage.share < TARGET_CPU)})"
    )
    print(
        f"RSS   {usage.rss_mib:.1f} MiB at the end, peak {usage.peak_mib:.1f} MiB "
        f"(target < {TARGET_RSS_MIB:g} MiB: {verdict(usage.peak_mib < TARGET_RSS_MIB)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help=f"measured span, each (default 5, with --examples 1; at most {MAX_MINUTES:g})",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter of `watchdogd run`")
    parser.add_argument(
        "--runtime-venv",
        type=Path,
        metavar="DIR",
        help="a venv with the runtime dependencies only (created when DIR holds no python): its python",
    )
    parser.add_argument("--examples", action="store_true", help="every config/examples/*.yaml in turn")
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (1.0 if args.examples else 5.0)
    seconds = max(0.1, min(minutes, MAX_MINUTES)) * 60
    python = runtime_venv(args.runtime_venv.resolve()) if args.runtime_venv else args.python
    print(describe_interpreter(python), flush=True)
    if args.examples:
        examples(python, seconds)
    else:
        one_service(python, seconds)


if __name__ == "__main__":
    main()
