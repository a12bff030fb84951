"""The wall clock stepped forward and back under a running watchdogd.

Windows, ``for`` timers, grace periods and deployment windows follow the
monotonic clock: an hour's step forward fires nothing and ends no window, a
step back holds nothing off, and the times watchdogd stores stay those of the
clock it started with. The step is made in the watchdogd process only (see
``tests/chaos/wallclock.py``); the test's own clock is the machine's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import Exporter, Watchdogd
from tests.chaos.helpers import deployment, epoch, register, rollbacks, rule
from tests.chaos.wallclock import OFFSET_FILE
from tests.e2e.conftest import scrape_config

pytestmark = pytest.mark.integration

HOUR = 3600.0


def test_wall_clock_steps_neither_fire_early_nor_hold_off(
    tmp_path: Path, watchdogd: Any, exporter: Any
) -> None:
    breaching: Exporter = exporter(lambda _: 10.0)
    offset = tmp_path / "offset"
    offset.write_text("0")
    wd: Watchdogd = watchdogd(
        scrape_config(breaching.url, "window: 1m, grace: 0s, mode: dry-run", rule="for: 6s")
    )
    wd.module = "tests.chaos.wallclock"
    wd.start(env={OFFSET_FILE: str(offset)})
    deployed = register(wd, "api")
    wd.wait_for("the rule pending", lambda: rule(wd, deployed["id"], "errors")["state"] == "pending", 10)
    pending_at = time.time()
    since = rule(wd, deployed["id"], "errors")["since"]

    offset.write_text(str(HOUR))  # an hour forward: past the `for` and past the 1m window
    time.sleep(2.0)
    assert rollbacks(wd) == []
    assert deployment(wd, deployed["id"])["state"] == "watching"
    still = rule(wd, deployed["id"], "errors")
    assert (still["state"], still["since"]) == ("pending", since)

    offset.write_text(str(-HOUR))  # and an hour back: polling and the timer go on regardless
    done = wd.wait_for(
        "the proposal, run dry", lambda: [r for r in rollbacks(wd) if r["state"] == "dry_run"], 15
    )
    fired_at = time.time()
    assert 4.0 <= fired_at - pending_at <= 9.0, fired_at - pending_at  # for: 6s, by the real clock
    assert abs(epoch(done[0]["proposed_at"]) - fired_at) < 3.0  # stored in real time, not an hour off
    assert abs(epoch(since) - pending_at) < 3.0
    assert wd.log().count('"event": "wall_clock_jumped"') == 2
    drift = wd.metric("watchdogd_clock_drift_seconds")
    assert drift is not None and abs(drift + HOUR) < 5.0
    assert wd.stop() == 0
