"""The Grafana dashboard queries only what a real ``watchdogd run`` exposes on /metrics."""

from __future__ import annotations

import http.server
import json
import re
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Receiver, Watchdogd

DASHBOARD = ROOT / "config" / "grafana" / "watchdogd.json"

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: not functions, labels, keywords, strings or variables."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = _GROUPING.sub("", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an aggregation, or an operator
        names.add(match.group())
    return names


def test_metric_names_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (source, le) (rate(a_bucket{x=~"b|c"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(x_sum[5m])) by (le) / sum(rate(x_count[5m])) offset 1h") == {
        "x_sum",
        "x_count",
    }
    assert metric_names('a and on (service, rule) (b == 1 or c{d="e f"} > 2e3)') == {"a", "b", "c"}
    assert metric_names("label_values(watchdogd_rule_value, service)") == {"watchdogd_rule_value", "service"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queried_names() -> set[str]:
    names: set[str] = set()
    for panel in panels():
        for target in panel["targets"]:
            names |= metric_names(target["expr"])
    for annotation in dashboard()["annotations"]["list"]:
        names |= metric_names(annotation.get("expr", ""))
    return names


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["uid"] == "watchdogd"
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["service"]["type"] == "query"
    assert variables["service"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and all(n.startswith("watchdogd_") for n in names), target["expr"]
            # every per-service metric follows the service variable
            if names & {"watchdogd_rule_state", "watchdogd_rule_value", "watchdogd_rollbacks_total"}:
                assert '$service"' in target["expr"], target["expr"]
    titles = " ".join(p["title"].lower() for p in panels())
    for topic in ("rule states", "threshold", "window", "proposals", "rollbacks", "detection latency"):
        assert topic in titles
    assert {"source errors", "source latency"} <= {p["title"].lower() for p in panels()}
    quantiles = [t["expr"] for p in panels() for t in p["targets"] if "histogram_quantile" in t["expr"]]
    assert any("watchdogd_detection_latency_seconds_bucket" in q for q in quantiles)
    # the names the contract documents are all on the dashboard
    assert {
        "watchdogd_rule_state",
        "watchdogd_rule_value",
        "watchdogd_deployment_window_remaining_seconds",
        "watchdogd_rollback_proposals_total",
        "watchdogd_rollbacks_total",
        "watchdogd_detection_latency_seconds_bucket",
        "watchdogd_source_errors_total",
        "watchdogd_source_duration_seconds_bucket",
    } <= queried_names()


class Health:
    """An app's /health on 127.0.0.1 whose status the test sets."""

    def __init__(self) -> None:
        self.status = 200
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(health.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    app = Health()
    yield app
    app.close()


def exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """Families with their types (``# TYPE`` lines) and the sample names of a /metrics page."""
    families, samples = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = kind
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return families, samples


def family_of(name: str, families: dict[str, str]) -> tuple[str, str] | None:
    """The family a queried name belongs to, by the exposition format's suffix rules.

    A counter's family is ``x_total`` in the Prometheus text format and ``x`` in
    OpenMetrics; a histogram's is ``x`` with ``x_bucket``, ``x_sum``, ``x_count`` samples.
    """
    kind = families.get(name)
    if kind in ("gauge", "untyped") or (kind == "counter" and name.endswith("_total")):
        return name, kind
    suffixes = {"_total": ("counter",), "_bucket": ("histogram",), "_sum": ("histogram", "summary")}
    suffixes["_count"] = ("histogram", "summary")
    for suffix, kinds in suffixes.items():
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and families.get(base) in kinds:
            return base, families[base]
    return None


def test_every_queried_metric_is_exposed(
    watchdogd: Callable[[str], Watchdogd], health: Health, receiver: Receiver
) -> None:
    config = f"""
defaults: {{interval: 300ms, window: 10m, grace: 0s, mode: auto}}
notify:
  - {{type: webhook, url: "{receiver.url}"}}
sources:
  health: {{type: http, url: "{health.url}", timeout: 1s}}
  broken: {{type: scrape, url: "http://127.0.0.1:1/metrics", timeout: 500ms}}
services:
  api:
    health: health
    rollback:
      steps: [webhook]
      webhook: {{url: "{receiver.url}", timeout: 2s, retries: 0}}
    rules:
      - {{name: health-down, source: health, field: up, condition: "< 1", immediate: true, action: rollback}}
      - {{name: broken-metric, source: broken, metric: up, condition: "< 1", action: notify}}
"""
    daemon = watchdogd(config)
    daemon.start()
    status, body = daemon.post(
        "/v1/deployments", {"service": "api", "image": "app:v2", "previous_image": "app:v1"}
    )
    assert status == 201, body
    daemon.wait_for(
        "window remaining",
        lambda: daemon.metric("watchdogd_deployment_window_remaining_seconds", service="api"),
        10,
    )
    daemon.wait_for(
        "rule state", lambda: daemon.metric("watchdogd_rule_state", service="api") is not None, 10
    )
    health.status = 500  # the deploy goes bad: the immediate rule rolls it back
    daemon.wait_for(
        "a rollback", lambda: daemon.metric("watchdogd_rollbacks_total", service="api") is not None, 15
    )
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("a reload", lambda: daemon.metric("watchdogd_config_reloads_total") is not None, 10)
    daemon.wait_for("a notification", lambda: daemon.metric("watchdogd_notifications_total") is not None, 10)

    _, text = daemon.get("/metrics", token=None)
    families, samples = exposition(str(text))
    missing, mistyped = [], []
    for name in sorted(queried_names()):
        if name not in samples:
            missing.append(name)
        if family_of(name, families) is None:
            mistyped.append(name)
    assert not missing, f"queried but no series on /metrics: {missing}"
    assert not mistyped, f"no family of a fitting type on /metrics for: {mistyped}"
    # and the other way: every family of watchdogd's own is on the dashboard
    queried_families = {family_of(name, families) for name in queried_names()}
    # (the client's *_created series, creation times, are not worth a panel)
    own = {f for f in families if f.startswith("watchdogd_") and not f.endswith("_created")}
    unused = {f.removesuffix("_total") for f in own} - {
        f[0].removesuffix("_total") for f in queried_families if f
    }
    assert not unused, f"exposed but not on the dashboard: {unused}"
    assert daemon.stop() == 0
