"""A latency rule in a running daemon: the scrape source keeps the histogram's history before the
deploy, the rule compares the requests since the deploy with it, and a slower p99 is proposed for a
rollback with the evidence in words.

The exporter on 127.0.0.1 serves a Prometheus histogram that grows by 50 requests a scrape; after
the deploy it turns slow (the p99 from the 0.25-0.5 s bucket to the 0.5-1 s one).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.e2e.conftest import LocalServer, Watchdogd
from tests.testbed.exposition import metrics_handler

pytestmark = pytest.mark.integration

BOUNDS = ("0.1", "0.25", "0.5", "1", "+Inf")
FAST = (40, 9, 1, 0, 0)  # per 50 requests, per bucket
SLOW = (20, 20, 7, 3, 0)


class HistogramExporter(LocalServer):
    def __init__(self) -> None:
        self.cumulative = [0] * len(BOUNDS)
        self.slow = False
        self.lock = threading.Lock()
        self.serve(metrics_handler(self.scrape), "/metrics")

    def scrape(self) -> str:
        with self.lock:
            running = 0
            for i, count in enumerate(SLOW if self.slow else FAST):
                running += count
                self.cumulative[i] += running
            lines = ["# TYPE lat_seconds histogram"]
            lines += [
                f'lat_seconds_bucket{{le="{le}"}} {v}' for le, v in zip(BOUNDS, self.cumulative, strict=True)
            ]
            lines += [f"lat_seconds_count {self.cumulative[-1]}", "lat_seconds_sum 0"]
            return "\n".join(lines) + "\n"


def test_a_slower_p99_after_the_deploy_is_proposed_with_its_evidence(watchdogd: Any) -> None:
    app = HistogramExporter()
    try:
        wd: Watchdogd = watchdogd(
            f"""
defaults: {{interval: 500ms, window: 2m, grace: 30s, mode: auto}}
sources:
  app: {{type: scrape, url: "{app.url}", timeout: 1s}}
services:
  api:
    rollback: {{steps: [verify]}}
    rules:
      - name: slow
        source: app
        latency: {{histogram: lat_seconds, quantile: 0.99, slower_by: 20%, confidence: 99%,
                   min_observations: 200, history: 20s}}
        action: rollback
"""
        )
        wd.start()
        time.sleep(8)  # about 16 scrapes of history: 750 requests, p99 in the 0.25-0.5 s bucket
        with app.lock:
            app.slow = True
        status, deployment = wd.post("/v1/deployments", {"service": "api"})
        assert status == 201, deployment

        def proposed() -> Any:
            items = wd.get("/v1/rollbacks")[1]["items"]
            return items[0] if items else None

        proposal = wd.wait_for("the latency rule's proposal", proposed, 30)
        assert proposal["state"] == "pending", proposal
        reason = proposal["reasons"][0]["reason"]
        assert reason.startswith("p99 ") and " after vs " in reason and "U-test p = " in reason, reason
        assert "with confidence" in reason and "past the 1.2x that fires" in reason, reason
        _, body = wd.get(f"/v1/deployments/{deployment['id']}")
        rule = next(r for r in body["rules"] if r["name"] == "slow")
        assert rule["state"] == "firing", rule
        status, vetoed = wd.post(f"/v1/rollbacks/{proposal['id']}/veto", {"reason": "checked by hand"})
        assert status == 200, vetoed
        assert wd.stop() == 0
    finally:
        app.close()
