"""The Grafana dashboard against the package: every metric it queries is one watchdogd exports.

Each expression (panels, annotations, variables) is parsed with promql-parser
after Grafana's own variables are given values, and every selector's metric
and label is looked up in a fresh ``Metrics`` registry: a renamed metric or
label fails here, not on someone's screen during an incident.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from tests.unit.test_lifecycle import World, make

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "watchdogd.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
TARGET_LABELS = {"instance", "job"}
"""What Prometheus adds to every series it scrapes."""


def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


async def exported() -> dict[str, set[str]]:
    """Every metric a daemon registers, with its labels, as collectors name them (counters without _total)."""
    world = await make()
    try:
        registry: CollectorRegistry = world.daemon.registry
        out: dict[str, set[str]] = {}
        for family in registry.collect():
            labels = set(registry._names_to_collectors[family.name]._labelnames)  # type: ignore[attr-defined]
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
            for suffix in suffixes.get(family.type, ("",)):
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        return out
    finally:
        await world.daemon.close(2)


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query on the dashboard."""
    found = []
    for panel in board()["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for annotation in board()["annotations"]["list"]:
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in board()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if text and (inner := re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)):
            found.append((f"variable {variable['name']!r}", inner.group(1)))
    return found


def selectors(expr: str) -> list[Any]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    parsed = promql_parser.parse(expr)
    found: list[Any] = []

    def visit(node: Any, *_: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(parsed, visit)
    return found


EXPRESSIONS = expressions()


async def test_every_queried_metric_and_label_is_exported() -> None:
    names = await exported()
    wrong = []
    for where, expr in EXPRESSIONS:
        found = selectors(expr)
        if not found:
            wrong.append(f"{where}: no metric in {expr}")
        for selector in found:
            if selector.name not in names:
                wrong.append(f"{where}: {selector.name} is not exported by watchdogd")
                continue
            for matcher in selector.matchers.matchers:
                if matcher.name not in names[selector.name] | TARGET_LABELS:
                    wrong.append(f"{where}: {selector.name} has no label {matcher.name}")
    assert not wrong, "\n".join(wrong)
    assert len(EXPRESSIONS) > 20


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_query_follows_the_instance_variable(where: str, expr: str) -> None:
    if where.startswith("variable 'instance'"):
        return  # what the variable's choices come from
    for selector in selectors(expr):
        matchers = {(m.name, m.value) for m in selector.matchers.matchers}
        assert ("instance", "$instance") in matchers, f"{where}: {selector.name} ignores $instance"


def test_variables_instance_then_service() -> None:
    variables = [v["name"] for v in board()["templating"]["list"]]
    assert variables[:3] == ["datasource", "instance", "service"]


def test_annotations_for_deploys_proposals_and_rollbacks() -> None:
    annotations = {a["name"]: a for a in board()["annotations"]["list"] if "expr" in a}
    assert set(annotations) >= {"Deploys", "Rollback proposals", "Rollbacks"}
    deploys = annotations["Deploys"]
    assert "watchdogd_deployment_started_timestamp_seconds" in deploys["expr"]
    assert deploys["useValueForTime"] is True and "* 1000" in deploys["expr"]  # Grafana wants milliseconds
    assert 'outcome="proposed"' in annotations["Rollback proposals"]["expr"]
    assert "watchdogd_rollbacks_total" in annotations["Rollbacks"]["expr"]
    for annotation in annotations.values():
        assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert "{{service}}" in annotation["titleFormat"]


def test_each_rule_threshold_is_drawn_beside_its_value() -> None:
    panel = next(p for p in board()["panels"] if p["title"] == "Rule values against their thresholds")
    exprs = [t["expr"] for t in panel["targets"]]
    assert any(e.startswith("watchdogd_rule_value{") for e in exprs)
    assert any(e.startswith("watchdogd_rule_threshold{") for e in exprs)


# --- the metrics behind them -----------------------------------------------------------------


async def test_the_threshold_gauge_is_set_at_every_evaluation() -> None:
    world: World = await make()
    try:
        await world.deploy()
        labels = {"service": "api", "rule": "errors"}
        await world.feed("a", 0.1)
        assert world.daemon.registry.get_sample_value("watchdogd_rule_threshold", labels) == 0.5
        assert world.daemon.registry.get_sample_value("watchdogd_rule_value", labels) == 0.1
    finally:
        await world.daemon.close(2)


async def test_the_deploy_time_is_exported_for_the_annotation() -> None:
    world: World = await make()
    try:
        deployment = await world.deploy()
        await world.daemon.deployments.tick()
        started = world.daemon.registry.get_sample_value(
            "watchdogd_deployment_started_timestamp_seconds", {"service": "api"}
        )
        assert started == deployment.started_at
    finally:
        await world.daemon.close(2)
