"""The state store refusing writes (its disk full): watchdogd says so and guards from memory.

Running as any user, a full disk is simulated with a file-size limit of 0 on
the watchdogd process (``prlimit``): every write that would grow a file fails
with EFBIG, which SQLite reports as "database or disk is full". The process
logs to a pipe, which the limit does not touch.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import Exporter, Watchdogd
from tests.chaos.helpers import register, rollbacks
from tests.e2e.conftest import ROOT, scrape_config

pytestmark = pytest.mark.integration


class PipedWatchdogd(Watchdogd):
    """A ``watchdogd run`` whose output goes through a pipe, copied to its log file by a thread."""

    def start(self, env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        config = self.write_config()
        self.log_path = self.workdir / "watchdogd.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watchdogd", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        out = self.process.stdout
        assert out is not None
        log_path = self.log_path

        def copy() -> None:
            with log_path.open("ab") as log:
                for line in iter(out.readline, b""):
                    log.write(line)
                    log.flush()

        threading.Thread(target=copy, daemon=True).start()
        self.wait_for("ready", lambda: self._ready(), timeout)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"watchdogd exited with {self.process.returncode}:\n{self.log()}")
        with contextlib.suppress(OSError):
            return self.get("/readyz", token=None)[0] == 200
        return False

    def limit_file_size(self, limit: int) -> None:
        assert self.process is not None
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def test_disk_full_keeps_guarding_and_loses_no_journaled_decision(tmp_path: Path, exporter: Any) -> None:
    breaching: Exporter = exporter(lambda _: 10.0)
    wd = PipedWatchdogd(
        tmp_path,
        scrape_config(breaching.url, "window: 1m, grace: 5s, mode: dry-run"),
        state_url=f"sqlite:///{tmp_path / 'state' / 'state.db'}",
    )
    (tmp_path / "state").mkdir()
    try:
        wd.start()
        register(wd, "api")
        proposal = wd.wait_for("a pending proposal", lambda: rollbacks(wd), timeout=10)[0]
        assert proposal["state"] == "pending"

        wd.limit_file_size(0)  # the disk is full from now on
        _, body = wd.wait_for(
            "readyz saying so", lambda: (lambda r: r if r[0] == 503 else None)(wd.get("/readyz", None)), 10
        )
        assert "state store failing" in body["reason"] and "full" in body["reason"], body
        before = wd.metric("watchdogd_rule_evaluations_total", service="api", rule="errors", result="firing")
        time.sleep(6.0)  # the proposal falls due while nothing can be written
        after = wd.metric("watchdogd_rule_evaluations_total", service="api", rule="errors", result="firing")
        assert before is not None and after is not None and after >= before + 5  # still evaluating
        assert rollbacks(wd)[0]["state"] == "pending"  # reads still work; the decision waits
        assert wd.log().count('"event": "store_failing"') == 1  # said once, not at every poll

        wd.limit_file_size(resource.RLIM_INFINITY)  # space again
        done = wd.wait_for(
            "the journaled decision carried out",
            lambda: [r for r in rollbacks(wd) if r["state"] == "dry_run"],
            timeout=15,
        )
        assert len(done) == 1 and done[0]["id"] == proposal["id"]
        wd.wait_for("ready again", lambda: wd.get("/readyz", None)[0] == 200, 10)
        assert '"event": "store_recovered"' in wd.log()
        assert wd.stop() == 0
    finally:
        if wd.process is not None and wd.process.poll() is None:
            wd.process.kill()
            wd.process.wait(10)
