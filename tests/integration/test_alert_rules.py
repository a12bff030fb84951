"""The alerts on watchdogd itself, checked and unit-tested by promtool.

``config/alerts/watchdogd-alerts.yaml`` must load in Prometheus (``promtool
check rules``) and do what ``watchdogd-alerts.test.yaml`` says, each alert
firing and not firing (``promtool test rules``). The chart's PrometheusRule,
rendered, must load too. promtool comes with Debian's prometheus package
(scripts/testbed.sh installs it); without it these tests fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helmrender import render_chart

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "alerts"
RULES = ALERTS / "watchdogd-alerts.yaml"
RULE_TESTS = ALERTS / "watchdogd-alerts.test.yaml"
CHART = ROOT / "helm" / "watchdogd"
ALERT_NAMES = {
    "WatchdogdDown",
    "WatchdogdNoLeader",
    "WatchdogdSourceDown",
    "WatchdogdSourceErrors",
    "WatchdogdRuleBlind",
    "WatchdogdRollbackFailed",
    "WatchdogdNotificationsFailing",
}


def promtool(*args: str | Path, cwd: Path = ALERTS) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found, "promtool (Debian package prometheus) is missing: run scripts/testbed.sh"
    return subprocess.run(
        [found, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_file_passes_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_rules_file_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert [g["name"] for g in groups] == ["watchdogd"]
    rules = groups[0]["rules"]
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == ALERT_NAMES
    assert quiet == ALERT_NAMES


@pytest.mark.parametrize("job", ["", "watchdogd"], ids=["service-job", "named-job"])
def test_chart_prometheus_rule_passes_promtool_check(tmp_path: Path, job: str) -> None:
    values = tmp_path / "values-rule.yaml"
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, "job": job}}))
    rendered = yaml.safe_load(render_chart(CHART, (values,))["prometheusrule.yaml"])
    rules = tmp_path / "rendered-rules.yaml"
    rules.write_text(yaml.safe_dump(rendered["spec"]))
    result = promtool("check", "rules", rules, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
