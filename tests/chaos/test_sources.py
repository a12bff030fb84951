"""Sources that fail, flap or move: no data is never a reason to roll back, unless asked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import Exporter, Watchdogd
from tests.chaos.helpers import audit, deployment, register, rollbacks, rule
from tests.e2e.conftest import scrape_config
from tests.testbed.containers import free_port

pytestmark = pytest.mark.integration


def test_prometheus_down_whole_window_holds_by_default_and_fails_when_asked(watchdogd: Any) -> None:
    down = free_port()  # nothing listens there
    wd: Watchdogd = watchdogd(
        f"""
defaults: {{interval: 500ms, window: 8s, grace: 1h}}
sources:
  prom: {{type: prometheus, url: "http://127.0.0.1:{down}", timeout: 1s}}
services:
  holds:
    rollback: {{steps: [verify]}}
    rules:
      - {{name: up, source: prom, query: 'up{{job="api"}}', condition: "< 1", action: rollback}}
  strict:
    rollback: {{steps: [verify]}}
    rules:
      - name: up
        source: prom
        query: 'up{{job="api"}}'
        condition: "< 1"
        action: rollback
        on_missing: {{after: 3s, result: fail}}
"""
    )
    wd.start()
    holds = register(wd, "holds")
    strict = register(wd, "strict")
    started = time.monotonic()

    proposal = wd.wait_for("a proposal for strict", lambda: rollbacks(wd, "strict"), timeout=15)[0]
    assert proposal["state"] == "pending" and proposal["reasons"][0]["rule"] == "up"
    assert time.monotonic() - started >= 2.5  # not before on_missing.after

    # blind for the whole window: never promoted, ended unverified
    wd.wait_for("holds unverified", lambda: deployment(wd, holds["id"])["state"] == "unverified", timeout=20)
    assert rollbacks(wd, "holds") == []
    assert rule(wd, holds["id"], "up")["state"] == "no_data"
    ended = next(e for e in audit(wd, holds["id"]) if e["action"] == "unverified")
    assert ended["detail"]["blind_rules"] == ["up"]
    assert deployment(wd, strict["id"])["state"] == "watching"  # its proposal waits out the grace
    assert wd.stop() == 0


def test_flapping_series_never_fires_over_ten_windows(watchdogd: Any, exporter: Any) -> None:
    # Breaching for two scrapes (1s), fine for the next two: half the time, never for the 2s of `for`.
    flapping: Exporter = exporter(lambda n: 10.0 if (n // 2) % 2 == 0 else 0.0)
    wd: Watchdogd = watchdogd(
        scrape_config(flapping.url, "window: 21s, grace: 0, mode: dry-run", rule="for: 2s")
    )
    wd.start()
    deployed = register(wd, "api")
    wd.wait_for("promoted", lambda: deployment(wd, deployed["id"])["state"] == "promoted", timeout=35)
    assert rollbacks(wd) == []
    states = [e["detail"]["to"] for e in audit(wd, deployed["id"]) if e["action"] == "rule_state"]
    assert states.count("pending") >= 5, states  # it did breach, again and again
    assert "firing" not in states
    assert flapping.scrapes >= 40
    assert wd.stop() == 0


def test_redis_down_queue_depth_rule_has_no_data_and_never_rolls_back(watchdogd: Any) -> None:
    down = free_port()
    wd: Watchdogd = watchdogd(
        f"""
defaults: {{interval: 500ms, window: 6s, grace: 0}}
sources:
  queue: {{type: redis, url: "redis://127.0.0.1:{down}/0", key: "bull:import:wait", timeout: 1s}}
services:
  worker:
    rollback: {{steps: [verify]}}
    rules:
      - {{name: backlog, source: queue, condition: "> 100", action: rollback}}
"""
    )
    wd.start()
    deployed = register(wd, "worker")
    wd.wait_for("source errors counted", lambda: (wd.metric("watchdogd_source_errors_total") or 0) >= 2, 10)
    assert rule(wd, deployed["id"], "backlog")["state"] == "no_data"
    # blind for the whole window: never promoted, never rolled back either
    wd.wait_for("unverified", lambda: deployment(wd, deployed["id"])["state"] == "unverified", timeout=15)
    assert rollbacks(wd) == []
    assert "redis" in wd.log().lower()
    assert wd.stop() == 0


def test_log_file_deleted_and_recreated_keeps_counting(watchdogd: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("starting\n")
    wd: Watchdogd = watchdogd(
        f"""
defaults: {{interval: 500ms, window: 1m, grace: 0, mode: dry-run}}
sources:
  applog: {{type: file, path: "{log_file}"}}
services:
  api:
    rollback: {{steps: [verify]}}
    rules:
      - {{name: errors, source: applog, pattern: 'ERROR', condition: ">= 4", over: 1m, action: rollback}}
"""
    )
    wd.start()
    deployed = register(wd, "api")
    time.sleep(1.0)
    with log_file.open("a") as out:
        out.write("ERROR one\nERROR two\n")
    wd.wait_for("two matches", lambda: rule(wd, deployed["id"], "errors")["value"] == 2, timeout=10)
    log_file.unlink()  # rotated away: a new file under the same name
    time.sleep(1.0)
    log_file.write_text("ERROR three\nERROR four\n")
    wd.wait_for("the rule firing on four matches", lambda: rollbacks(wd), timeout=15)
    assert rule(wd, deployed["id"], "errors")["value"] == 4
    assert wd.stop() == 0
