"""The latency rule in the engine, its config, its fingerprint, and the scrape's bucket counts."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import pytest

from watchdogd.config.models import RuleConfig
from watchdogd.model import RuleState, Sample
from watchdogd.rules import compile_rule, dump_state, evaluate, fingerprint, load_state, start_latency
from watchdogd.selector import parse_selector
from watchdogd.sources.counts import buckets
from watchdogd.sources.promrate import Scrape, SeriesStore, series_key

DEPLOY = 1_800_000_000.0
BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)


def rule_config(**over: Any) -> RuleConfig:
    latency = {"histogram": "http_request_duration_seconds", **over}
    return RuleConfig.model_validate(
        {"name": "slow", "source": "app", "latency": latency, "action": "rollback"}
    )


def poll(
    rng: random.Random, requests: int, scale: float = 1.0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    counts = [0.0] * (len(BOUNDS) + 1)
    for _ in range(requests):
        v = scale * rng.lognormvariate(math.log(0.1), 0.5)
        counts[next((i for i, le in enumerate(BOUNDS) if v <= le), len(BOUNDS))] += 1
    return BOUNDS, tuple(counts)


def history(rng: random.Random, polls: int = 600, requests: int = 100) -> list[Sample]:
    return [Sample(DEPLOY - polls + i, requests, buckets=poll(rng, requests)) for i in range(polls)]


def run(cfg: RuleConfig, before: list[Sample], after: list[Sample | None]) -> list[Any]:
    rule = compile_rule(cfg, interval=1.0, window=3600.0)
    state = start_latency(rule, DEPLOY, before)
    states = []
    for i, sample in enumerate(after, start=1):
        at = DEPLOY + i
        given = Sample(at, None, "scrape failed") if sample is None else dataclasses.replace(sample, time=at)
        state, _ = evaluate(rule, state, given, at)
        states.append(state)
    return states


def test_a_slower_p99_fires_with_the_evidence_in_words() -> None:
    rng = random.Random(1)
    after = [Sample(0, 100, buckets=poll(rng, 100, scale=1.5)) for _ in range(40)]
    states = run(rule_config(), history(rng), after)
    assert states[0].state is RuleState.NO_DATA
    assert "100 of the 200 requests after the deploy" in states[0].reason
    fired = next(s for s in states if s.state is RuleState.FIRING)
    assert fired.reason.startswith("p99 ") and " after vs " in fired.reason
    assert "vs 60,000 requests, U-test p = " in fired.reason
    assert fired.value is not None and fired.value >= 1.2


def test_the_same_latency_stays_ok_over_many_looks() -> None:
    rng = random.Random(2)
    after = [Sample(0, 100, buckets=poll(rng, 100)) for _ in range(1000)]
    states = run(rule_config(), history(rng), after)
    assert RuleState.FIRING not in {s.state for s in states}
    assert states[-1].state in (RuleState.OK, RuleState.PENDING)


def test_without_a_histogram_before_the_deploy_it_says_so() -> None:
    rng = random.Random(3)
    states = run(rule_config(), [], [Sample(0, 100, buckets=poll(rng, 100))] * 3)
    assert {s.state for s in states} == {RuleState.NO_DATA}
    assert states[-1].reason == "no pre-deploy histogram: no bucket counts in the 1h before the deploy"
    short = history(rng, polls=1, requests=50)
    states = run(rule_config(), short, [Sample(0, 100, buckets=poll(rng, 100))] * 3)
    assert "too little history: 50 requests in the 1h before the deploy, 200 are needed" in states[-1].reason


def test_a_changed_bucket_layout_is_compared_on_the_shared_bounds() -> None:
    rng = random.Random(4)
    coarse = (0.1, 0.3, 0.5, 1.0, 2.0)
    after = []
    for _ in range(40):
        _, counts = poll(rng, 100, scale=2.0)
        # regroup onto the coarse layout: cumulative counts at shared bounds
        cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
        at = [cumulative[BOUNDS.index(le)] for le in coarse] + [cumulative[-1]]
        after.append(
            Sample(0, 100, buckets=(coarse, tuple(b - a for a, b in zip([0.0, *at], at, strict=False))))
        )
    states = run(rule_config(), history(rng), after)
    assert states[-1].state is RuleState.FIRING


def test_a_gap_is_no_evidence_and_the_state_survives_the_store() -> None:
    rng = random.Random(5)
    after: list[Sample | None] = [Sample(0, 100, buckets=poll(rng, 100)) for _ in range(3)] + [None]
    states = run(rule_config(), history(rng), after)
    assert states[-2].state is RuleState.OK  # looked at 200 requests: nothing slower
    assert states[-1].state is RuleState.NO_DATA and "scrape failed" in states[-1].reason
    assert load_state(dump_state(states[-2])) == states[-2]


def test_the_fingerprint_covers_the_latency_settings_and_keeps_old_rules() -> None:
    assert fingerprint(rule_config()) != fingerprint(rule_config(slower_by="30%"))
    assert fingerprint(rule_config()) != fingerprint(rule_config(quantile=0.9))
    assert fingerprint(rule_config()) != fingerprint(rule_config(confidence="95%"))
    plain = RuleConfig.model_validate({"name": "r", "source": "s", "metric": "m", "condition": "> 1"})
    import hashlib
    import json

    meaning = plain.model_dump(
        mode="json", by_alias=True, exclude={"name", "description", "severity", "action"}
    )
    meaning.pop("sequential")
    meaning.pop("latency")
    old = hashlib.sha256(json.dumps(meaning, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert fingerprint(plain) == old


def test_the_config_takes_latency_on_a_scrape_source_only(tmp_path: Path) -> None:
    from watchdogd.config.loader import load_config_text
    from watchdogd.errors import ConfigError

    text = """\
sources:
  app: {type: scrape, url: http://127.0.0.1:9100/metrics}
  prom: {type: prometheus, url: http://127.0.0.1:9090}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: slow
        source: app
        latency: {histogram: http_request_duration_seconds, quantile: 0.99, slower_by: 20%, confidence: 99%}
        action: rollback
"""
    config = load_config_text(text, filename="w.yaml", base_dir=tmp_path)
    spec = config.services["api"].rules[0].latency
    assert spec is not None and spec.slower_by == pytest.approx(0.2) and spec.min_observations == 200
    on_prometheus = load_config_text(text.replace("source: app", "source: prom"), filename="w.yaml")
    assert on_prometheus.services["api"].rules[0].latency is not None
    broken = (
        text.replace("source: app", "source: web")
        .replace("  prom:", "  web: {type: http, url: http://127.0.0.1:8080/health}\n  prom:")
        .replace("        action: rollback", "        for: 10s\n        action: rollback")
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(broken, filename="w.yaml", base_dir=tmp_path)
    problems = " | ".join(str(p) for p in info.value.problems)
    assert "'latency' does not apply to a http source" in problems
    timed = text.replace("        action: rollback", "        for: 10s\n        action: rollback")
    with pytest.raises(ConfigError) as info:
        load_config_text(timed, filename="w.yaml", base_dir=tmp_path)
    assert "a latency rule takes no for, immediate or keep_firing_for" in str(info.value.problems)
    bad_query = text.replace("source: app", "source: prom").replace(
        "latency: {histogram: http_request_duration_seconds,", "latency: {histogram: 'h{',"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(bad_query, filename="w.yaml", base_dir=tmp_path)
    assert "latency.histogram" in " | ".join(str(p) for p in info.value.problems)
    with pytest.raises(ConfigError):
        load_config_text(
            text.replace("confidence: 99%", "confidence: 40%"), filename="w.yaml", base_dir=tmp_path
        )


def _scrape(store: SeriesStore, at: float, counts: dict[str, float], route: str = "/") -> None:
    values = {series_key("h_bucket", {"le": le, "route": route}): value for le, value in counts.items()}
    store.ingest(at, Scrape(values), 60)


def test_bucket_counts_are_the_growth_since_the_previous_scrape_summed_by_le() -> None:
    store = SeriesStore()
    selector = parse_selector("h_bucket")
    _scrape(store, 1.0, {"0.1": 5, "0.5": 8, "+Inf": 10})
    assert buckets(store, selector, 1.0, None).reason == "first scrape: counting starts at the next one"
    _scrape(store, 2.0, {"0.1": 7, "0.5": 12, "+Inf": 15})
    sample = buckets(store, selector, 2.0, 1.0)
    assert sample.buckets == ((0.1, 0.5), (2.0, 2.0, 1.0)) and sample.value == 5
    _scrape(store, 3.0, {"0.1": 1, "0.5": 1, "+Inf": 2})  # reset: counts from zero
    assert buckets(store, selector, 3.0, 2.0).buckets == ((0.1, 0.5), (1.0, 0.0, 1.0))
    _scrape(store, 4.0, {"0.1": 1, "0.5": 1})
    assert "+Inf" in str(buckets(store, selector, 4.0, 3.0).reason)


CONFIG = """\
sources:
  app: {type: scrape, url: http://127.0.0.1:9100/metrics}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: slow
        source: app
        latency: {histogram: http_request_duration_seconds, slower_by: 20%, confidence: 99%}
        action: rollback
"""

TESTS = """\
rule_files: [api.yaml]
interval: 5s
tests:
  - name: "p99 from the 0.25-0.5 s bucket to the 0.5-1 s one rolls back at the next look"
    deploy_at: 1h
    series:
      - source: app
        buckets:
          "0.1": "0+400x720 288200+200x9"
          "0.25": "0+490x720 353200+400x9"
          "0.5": "0+497x720 358310+470x9"
          "1": "0+500x720 360495+495x9"
          "+Inf": "0+500x730"
    expect:
      - {rule: slow, at: 1h, state: ok}
      - {rule: slow, at: 1h5s, state: firing}
      - proposal_at: 1h5s
  - name: "the same latency never does"
    deploy_at: 1h
    series:
      - source: app
        buckets: {"0.1": "0+400x800", "0.25": "0+490x800", "0.5": "0+497x800", "1": "0+500x800",
                  "+Inf": "0+500x800"}
    expect:
      - {rule: slow, at: 1h5m, state: ok}
      - proposal_at: never
"""


def test_test_rules_feeds_a_latency_rule_its_bucket_counters(tmp_path: Path) -> None:
    from watchdogd.ruletests import load_test_file, run_test

    (tmp_path / "api.yaml").write_text(CONFIG)
    (tmp_path / "api.test.yaml").write_text(TESTS)
    tests, config = load_test_file(tmp_path / "api.test.yaml")
    outcomes = [run_test(test, config, tests.interval) for test in tests.tests]
    assert [o.failures for o in outcomes] == [[], []]


def test_test_rules_says_what_is_wrong_with_buckets(tmp_path: Path) -> None:
    from watchdogd.errors import ConfigError
    from watchdogd.ruletests import load_test_file

    (tmp_path / "api.yaml").write_text(CONFIG)
    (tmp_path / "api.test.yaml").write_text(TESTS.replace('"+Inf": "0+500x730"', '"2": "0+500x730"'))
    with pytest.raises(ConfigError) as info:
        load_test_file(tmp_path / "api.test.yaml")
    assert "the buckets need a '+Inf' one" in str(info.value)


def test_a_prometheus_source_counts_each_bucket_series_growth_by_le() -> None:
    import json

    from watchdogd.selector import bucket_selector
    from watchdogd.sources.counts import BucketMemory

    assert bucket_selector('h{route="/a"}') == 'h_bucket{route="/a"}'
    assert bucket_selector("h") == "h_bucket"

    def key(le: str, route: str) -> str:
        return json.dumps({"__name__": "h_bucket", "le": le, "route": route}, sort_keys=True)

    memory = BucketMemory()
    first = {key("0.1", "/a"): 5, key("+Inf", "/a"): 10, key("0.1", "/b"): 1, key("+Inf", "/b"): 1}
    assert "first poll" in str(memory.buckets("h", 1.0, first, "h_bucket").reason)
    second = {key("0.1", "/a"): 7, key("+Inf", "/a"): 15, key("0.1", "/b"): 2, key("+Inf", "/b"): 4}
    sample = memory.buckets("h", 2.0, second, "h_bucket")
    assert sample.buckets == ((0.1,), (3.0, 5.0)) and sample.value == 8
    assert "no series match h_bucket" in str(memory.buckets("h", 3.0, {}, "h_bucket").reason)


def test_replay_reads_a_latency_rule_s_history_as_timestamp_le_count_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchdogd.cli import main

    (tmp_path / "api.yaml").write_text(CONFIG)
    series = tmp_path / "s.csv"
    series.write_text("0,1\n5,1\n")
    assert main(["replay", "-c", str(tmp_path / "api.yaml"), "--rule", "slow", "--series", str(series)]) == 2
    assert "s.csv:1: expected 'timestamp,le,count', got 2 columns" in capsys.readouterr().err
