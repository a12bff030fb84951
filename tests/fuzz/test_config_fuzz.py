"""The config loader never crashes: any text gives a Config or a ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdogd.config import Config
from watchdogd.config.loader import load_config_text
from watchdogd.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = """
sources:
  app: {type: scrape, url: "http://127.0.0.1:9100/metrics"}
  prom: {type: prometheus, url: "http://127.0.0.1:9090"}
services:
  api:
    rollback: {steps: [verify]}
    rules:
      - {name: errors, source: app, metric: errors, condition: "> 5", for: 10s, action: rollback}
      - {name: up, source: prom, query: up, condition: "< 1", on_missing: {after: 3s, result: fail}}
"""

KEYS = st.sampled_from(
    [
        "sources", "services", "defaults", "state", "server", "notify", "rules", "rollback", "type",
        "url", "name", "source", "condition", "for", "interval", "window", "grace", "mode", "steps",
        "query", "metric", "pattern", "over", "container", "on_missing", "after", "result", "ratio",
    ]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["10s", "-1s", "1h", "0", "> 5", "prometheus", "scrape", "rollback", "dry-run", "1e400s"]
    ),
)
TREES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def outcome(text: str, base: Path) -> Config | ConfigError:
    try:
        return load_config_text(text, "fuzz.yaml", base)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError names at least one problem"
        return exc


def test_the_seed_config_is_valid(tmp_path: Path) -> None:
    assert isinstance(outcome(VALID, tmp_path), Config)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    outcome(text, Path("/nonexistent"))


@FUZZ
@given(TREES)
def test_random_structures(tree: Any) -> None:
    outcome(yaml.safe_dump(tree), Path("/nonexistent"))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["sources", "services", "defaults"]), TREES), max_size=3))
def test_valid_config_with_parts_replaced(parts: list[tuple[str, Any]]) -> None:
    doc = yaml.safe_load(VALID)
    for key, value in parts:
        doc[key] = value
    outcome(yaml.safe_dump(doc), Path("/nonexistent"))


@FUZZ
@given(st.integers(min_value=0, max_value=len(VALID)), st.text(max_size=20))
def test_valid_text_with_bytes_spliced_in(at: int, junk: str) -> None:
    outcome(VALID[:at] + junk + VALID[at:], Path("/nonexistent"))
