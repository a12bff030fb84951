"""``watchdogd demo`` as a newcomer runs it: a real rollback, a timeline, exit 0, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_rolls_back_and_cleans_up(docker_client: Any) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "watchdogd", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert elapsed < 120, elapsed
    for step in (
        "deploy: v2 replaces v1",
        "rollback proposed",
        "rollback executing",
        "step container done",
        "step sql done",
        "step verify done",
        "rollback succeeded",
    ):
        assert step in out, (step, out)
    assert "schema:    as before the migration" in out
    assert "ledger:    1 row(s)" in out
    assert out.rstrip().endswith("rolled back as expected")
    left = docker_client.containers.list(all=True, filters={"name": "watchdogd-demo-api-"})
    assert left == []
