"""``watchdogd replay`` of a latency rule as a user runs it: a process, a config, a CSV of the
histogram's cumulative bucket counts; what it prints and how it exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT
from tests.latency_history import csv_rows, cumulative

T0 = 1_800_000_000
CONFIG = """\
defaults: {window: 10m, interval: 5s, grace: 2m}
sources:
  app: {type: scrape, url: "http://127.0.0.1:9/metrics"}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: slow
        source: app
        latency: {histogram: 'lat_seconds{route="/api"}', history: 10m}
        action: rollback
"""


def replay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "watchdogd",
            "replay",
            "-c",
            str(tmp_path / "api.yaml"),
            "--rule",
            "slow",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_replay_of_a_latency_rule_from_a_csv(tmp_path: Path) -> None:
    (tmp_path / "api.yaml").write_text(CONFIG)
    rows = csv_rows(T0, 5, cumulative(5, 480, slow_from=300))  # 40 minutes; twice as slow from 25m
    (tmp_path / "latency.csv").write_text("\n".join(["timestamp,le,count", *rows]) + "\n")

    done = replay(tmp_path, "--series", str(tmp_path / "latency.csv"), "--deploy-at", str(T0 + 1500))
    assert (done.returncode, done.stderr) == (0, ""), done
    lines = done.stdout.splitlines()
    assert lines[0] == "rule api/slow, one evaluation every 5s"
    firing = next(line for line in lines if "-> firing: p99 " in line)
    assert "U-test p = " in firing and "past the 1.2x that fires" in firing
    assert "would propose a rollback" in done.stdout and "grace 2m" in done.stdout
    assert lines[-1].endswith(": 1 would-be rollbacks (one per 14m55s)"), lines

    done = replay(tmp_path, "--series", str(tmp_path / "latency.csv"), "--every", "5m")
    assert (done.returncode, done.stderr) == (0, ""), done
    lines = done.stdout.splitlines()
    assert lines[-1] == (
        "6 deploys, one every 5m, each watched 10m: 1 would have been rolled back"
        " (16.7% of the 6 that could learn)"
    ), lines
    assert lines[1].startswith("deploy at 2027-01-15T08:25:00Z: would roll back "), lines


def test_a_bad_row_exits_2_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "api.yaml").write_text(CONFIG)
    (tmp_path / "latency.csv").write_text("timestamp,le,count\n1800000000,+Inf,4\n1800000005,+Inf,four\n")
    done = replay(tmp_path, "--series", str(tmp_path / "latency.csv"))
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert (
        done.stderr.strip() == f"watchdogd replay: {tmp_path / 'latency.csv'}:3: count 'four' is not a number"
    )
