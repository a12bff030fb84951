"""The sequential rule: its statistics, its life in the engine, and its false-rollback rate by simulation."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.traffic import Traffic, poisson
from watchdogd.config.models import RuleConfig
from watchdogd.model import RuleState, Sample
from watchdogd.rules import compile_rule, dump_state, evaluate, fingerprint, load_state, start_sequential
from watchdogd.rules.sequential import (
    CAP,
    MIN_POLLS,
    Learned,
    Sequential,
    dispersion,
    learn,
    step,
    tail,
    threshold,
    upper_rate,
)

DEPLOY = 1_800_000_000.0


def spec(**over: Any) -> Sequential:
    values: dict[str, Any] = {
        "bad": 0.02,
        "healthy": None,
        "history": 3600.0,
        "dispersion": None,
        "false_rollback": 0.01,
        "evaluations": 7200,
        "min_requests": 50,
    }
    values.update(over)
    return Sequential(**values)


def rule_config(**over: Any) -> RuleConfig:
    sequential = {"errors": 'req_total{code="500"}', "total": "req_total", "bad": "2%", **over}
    return RuleConfig.model_validate(
        {"name": "errors", "source": "app", "sequential": sequential, "action": "rollback"}
    )


# --- the statistics -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    p0=st.floats(0.001, 0.1),
    ratio=st.floats(1.5, 20),
    n=st.integers(1, 400),
    clump=st.integers(1, 6),
)
def test_the_evidence_of_a_healthy_poll_is_a_martingale(p0: float, ratio: float, n: int, clump: int) -> None:
    """E[exp(l)] = 1 when errors come in clumps of phi: Ville's bound is exact, not asymptotic."""
    p1 = min(0.99, p0 * ratio)
    mean = n * p0 / clump
    expected = 0.0
    k = 0
    log_pmf = -mean
    while k < 10 * mean * p1 / p0 + 100:  # the tilted law has mean * p1 / p0
        llr = (clump * k * math.log(p1 / p0) - n * (p1 - p0)) / clump
        expected += math.exp(log_pmf + llr)
        k += 1
        log_pmf += math.log(mean) - math.log(k)
    assert expected == pytest.approx(1.0, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(p0=st.floats(0.001, 0.1), ratio=st.floats(1.5, 20), n=st.integers(1, 400), phi=st.floats(1, 8))
def test_a_binomial_poll_or_a_larger_dispersion_only_lowers_the_evidence(
    p0: float, ratio: float, n: int, phi: float
) -> None:
    """Binomial errors, independent: E[exp(l / phi)] <= 1 for any phi >= 1 (a supermartingale)."""
    p1 = min(0.99, p0 * ratio)
    expected = 0.0
    for k in range(n + 1):
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        log_pmf += k * math.log(p0) + (n - k) * math.log1p(-p0)
        llr = (k * math.log(p1 / p0) - n * (p1 - p0)) / phi
        expected += math.exp(log_pmf + llr)
    assert expected <= 1 + 1e-9


def test_the_bound_spends_alpha_over_the_polls_of_the_window() -> None:
    assert threshold(0.001, 7200) == pytest.approx(math.log(7.2e6))
    assert spec().alternatives == (0.02, 0.08, 0.32)
    assert spec(healthy=0.005).bound == pytest.approx(math.log(3 * 7200 / 0.01))
    assert spec().bound == pytest.approx(math.log(3 * 7200 / 0.005))  # half goes to the learned rate


def test_step_resets_at_zero_and_grows_on_errors() -> None:
    assert step(0.0, 0, 100, 0.005, 0.2, 1.0) == 0.0
    grown = step(0.0, 20, 100, 0.005, 0.2, 1.0)
    assert grown == pytest.approx(20 * math.log(40) - 100 * 0.195)
    assert step(0.0, 20, 100, 0.005, 0.2, 4.0) == pytest.approx(grown / 4)


def test_tail_is_the_poisson_tail() -> None:
    mean = 3.0
    exact = 1 - sum(math.exp(-mean) * mean**k / math.factorial(k) for k in range(7))
    assert tail(7, 600, 0.005, 1.0) == pytest.approx(exact, rel=1e-9)
    assert tail(2, 600, 0.005, 1.0) == 1.0
    assert tail(23, 104, 0.005, 1.0) < 1e-19


@settings(max_examples=100, deadline=None)
@given(errors=st.integers(0, 10_000), extra=st.integers(1, 10**7), phi=st.floats(1, 10))
def test_the_upper_rate_is_above_the_estimate(errors: int, extra: int, phi: float) -> None:
    requests = errors + extra
    assert upper_rate(errors, requests, phi, 0.005) >= errors / requests
    assert upper_rate(errors, requests, phi, 0.005) >= upper_rate(errors, requests, phi, 0.05)


def test_dispersion_of_independent_errors_is_near_one_and_of_clumps_near_their_size() -> None:
    rng = random.Random(7)
    binomial = [(sum(rng.random() < 0.01 for _ in range(200)), 200) for _ in range(600)]
    assert dispersion(binomial, 0.01) < 1.6
    clumped = [(4 * poisson(rng, 0.5), 200) for _ in range(600)]
    assert 3.0 < dispersion(clumped, 0.01) < 6.0


def test_dispersion_counts_errors_correlated_over_minutes() -> None:
    """A rate that drifts by the minute looks independent poll by poll; blocks of polls show it."""
    rng = random.Random(3)
    polls = []
    for _ in range(60):
        rate = 0.01 * math.exp(rng.gauss(0, 0.5))
        polls += [(poisson(rng, 100 * rate), 100) for _ in range(60)]
    per_poll = dispersion(polls[:40], 0.01)  # 40 polls: only scales 1 and 2 are measured
    assert dispersion(polls, 0.01) > 2 * per_poll


def test_too_little_history_says_so() -> None:
    few = [(1, 100)] * (MIN_POLLS - 1)
    assert "too little history: 29 polls" in str(learn(spec(), few, "1h"))
    clean = [(0, 100)] * 100
    assert "0 errors" in str(learn(spec(), clean, "1h")) and "dispersion:" in str(learn(spec(), clean, "1h"))
    sparse = [(1, 10)] * 40  # 4 errors in 400 requests: cannot tell 1% from 2%
    assert "not clearly under the bad 2%" in str(learn(spec(dispersion=1.0), sparse, "1h"))


def test_written_rate_and_dispersion_need_no_history() -> None:
    learned = learn(spec(healthy=0.005, dispersion=2.0), [], "1h")
    assert learned == Learned(0.005, 0.005, 2.0, 0, 0, 0)


# --- the rule in the engine ---------------------------------------------------------------------


def healthy_history(rng: random.Random, polls: int = 600, rate: float = 0.005) -> list[Sample]:
    samples = []
    for i in range(polls):
        errors = sum(rng.random() < rate for _ in range(100))
        samples.append(Sample(DEPLOY - polls + i, errors / 100, counts=(errors, 100)))
    return samples


def run(rule_cfg: RuleConfig, history: list[Sample], polls: list[tuple[float, float] | None]) -> list[Any]:
    rule = compile_rule(rule_cfg, interval=1.0, window=7200.0)
    state = start_sequential(rule, DEPLOY, history)
    states = []
    for i, counts in enumerate(polls, start=1):
        at = DEPLOY + i
        sample = Sample(at, None, "scrape failed") if counts is None else Sample(at, 0.0, counts=counts)
        state, _ = evaluate(rule, state, sample, at)
        states.append(state)
    return states


def test_an_error_step_fires_on_the_first_poll_with_the_evidence_in_words() -> None:
    rng = random.Random(1)
    states = run(rule_config(), healthy_history(rng), [(0, 100), (1, 100), (20, 100)])
    assert [s.state for s in states] == [RuleState.OK, RuleState.OK, RuleState.FIRING]
    reason = states[-1].reason
    assert "20 errors in 100 requests since " in reason
    assert "this happens with probability" in reason and "e-" in reason
    assert "false rollback 1%" not in reason  # the default is 0.1%
    assert "past the 10^7.6 that fires (false rollback 0.1% over 7200 polls)" in reason


def test_a_healthy_series_never_fires_and_a_gap_is_no_evidence() -> None:
    rng = random.Random(2)
    polls: list[tuple[float, float] | None] = [
        (sum(rng.random() < 0.005 for _ in range(100)), 100) for _ in range(1800)
    ]
    polls[100:110] = [None] * 10
    states = run(rule_config(), healthy_history(rng), polls)
    assert all(s.state in (RuleState.OK, RuleState.NO_DATA, RuleState.PENDING) for s in states)
    assert states[105].state is RuleState.NO_DATA and "scrape failed" in states[105].reason
    assert states[-1].state is RuleState.OK


def test_never_on_too_little_traffic() -> None:
    """Five failed requests of five: strong odds, but not the requests to fire on."""
    rng = random.Random(4)
    states = run(rule_config(min_requests=50), healthy_history(rng), [(5, 5)] * 8)
    assert RuleState.FIRING not in [s.state for s in states[:8]]
    states = run(rule_config(min_requests=50), healthy_history(rng), [(5, 5)] * 12)
    assert states[-1].state is RuleState.FIRING  # ten polls in: 50 requests, all failing


def test_without_history_it_stays_no_data_and_says_why() -> None:
    states = run(rule_config(), [], [(50, 100)] * 5)
    assert {s.state for s in states} == {RuleState.NO_DATA}
    assert states[-1].reason.startswith("too little history: 0 polls with traffic in the 1h")


def test_a_written_healthy_rate_and_dispersion_work_without_history() -> None:
    states = run(rule_config(healthy="0.5%", dispersion=2), [], [(30, 100)])
    assert states[-1].state is RuleState.FIRING
    assert "errors 2x as bursty" in states[-1].reason


def test_it_clears_when_the_rate_is_healthy_again() -> None:
    rng = random.Random(5)
    states = run(rule_config(), healthy_history(rng), [(20, 100)] * 30 + [(0, 100)] * 60)
    assert states[29].state is RuleState.FIRING
    assert states[29].value == pytest.approx(CAP * states[29].threshold)  # capped
    assert states[-1].state is RuleState.OK


def test_the_state_survives_the_store() -> None:
    rng = random.Random(6)
    state = run(rule_config(), healthy_history(rng), [(20, 100)])[-1]
    assert load_state(dump_state(state)) == state


def test_the_fingerprint_covers_the_sequential_settings_and_keeps_old_rules() -> None:
    assert fingerprint(rule_config()) != fingerprint(rule_config(bad="3%"))
    assert fingerprint(rule_config()) != fingerprint(rule_config(false_rollback="1%"))
    plain = RuleConfig.model_validate({"name": "r", "source": "s", "metric": "m", "condition": "> 1"})
    assert "sequential" not in str(plain.model_dump(exclude_none=True))
    import hashlib
    import json

    meaning = plain.model_dump(
        mode="json", by_alias=True, exclude={"name", "description", "severity", "action"}
    )
    meaning.pop("sequential")
    meaning.pop("latency")
    old = hashlib.sha256(json.dumps(meaning, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert fingerprint(plain) == old  # a stored state of an existing rule is still reused


# --- the false-rollback rate, by simulation -------------------------------------------------------


def simulate(runs: int, alpha: float, dispersion_written: float | None, seed: int) -> int:
    """False rollbacks of ``runs`` healthy deploys: 1 h learned before, 1 h watched after, 1 s polls."""
    rule = spec(false_rollback=alpha, dispersion=dispersion_written, evaluations=3600)
    bound = rule.bound
    fired = 0
    for r in range(runs):
        traffic = Traffic(random.Random(seed + r))
        learned = learn(rule, list(traffic.polls(0, 3600)), "1h")
        assert isinstance(learned, Learned)
        stat = 0.0
        for errors, requests in traffic.polls(3600, 3600):
            stat = step(stat, errors, requests, learned.rate, rule.bad, learned.dispersion)
            if stat >= bound:
                fired += 1
                break
    return fired


def test_the_false_rollback_rate_holds_on_bursty_drifting_traffic() -> None:
    """120 healthy hours of overdispersed, time-varying traffic at a stated 5%: at most 5% (+ chance).

    P(Binomial(120, 0.05) > 13) < 0.2%: a rate above 5% is what fails this test. The
    same traffic judged as binomial (dispersion 1) fires on most deploys, which is
    what the dispersion is there to prevent.
    """
    assert simulate(120, 0.05, None, seed=10_000) <= 13
    assert simulate(20, 0.05, 1.0, seed=20_000) >= 10


# --- a prometheus source -----------------------------------------------------------------------


def test_a_sequential_rule_reads_a_prometheus_source_with_counters_not_a_query(tmp_path: Path) -> None:
    from watchdogd.config.loader import load_config_text
    from watchdogd.errors import ConfigError

    text = """\
sources:
  prom: {type: prometheus, url: http://127.0.0.1:9090}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: errors
        source: prom
        sequential: {errors: 'req_total{code="500"}', total: req_total, bad: 2%}
        action: rollback
"""
    config = load_config_text(text, filename="w.yaml", base_dir=tmp_path)
    assert config.services["api"].rules[0].sequential is not None
    broken = text.replace("total: req_total,", "total: 'req_total{',").replace(
        "        action: rollback", "        query: up\n        action: rollback"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(broken, filename="w.yaml", base_dir=tmp_path)
    problems = " | ".join(str(p) for p in info.value.problems)
    assert "a sequential rule takes its counters, not a query" in problems
    assert "sequential.total" in problems and "does not parse" in problems


# --- bursts in the history ---------------------------------------------------------------------


def test_bursts_seen_before_the_deploy_raise_the_dispersion_until_the_same_burst_stays_ok() -> None:
    """An hour of 500 requests a poll at 0.5%, with a 3-poll burst at 2% every 10 minutes.

    The Pearson dispersion averages six bursts into 3,600 quiet polls and stays near 1, so
    the same burst after the deploy would be taken for a bad deploy; calibrated on the
    history's blocks, the dispersion makes it weigh like what it is.
    """
    quiet, burst = (2.5, 500.0), (10.0, 500.0)
    history = ([quiet] * 117 + [burst] * 3) * 6
    rule = spec(false_rollback=0.001, evaluations=1440)
    learned = learn(rule, history, "1h")
    assert isinstance(learned, Learned)
    pearson = dispersion(history, learned.estimate)
    assert learned.dispersion > 2 * pearson, (learned.dispersion, pearson)
    stat = 0.0
    for errors, requests in [quiet] * 10 + [burst] * 3:
        stat = max(stat, step(stat, errors, requests, learned.rate, rule.bad, learned.dispersion))
    assert stat < rule.bound / 2, (stat, rule.bound)
    plain = 0.0
    for errors, requests in [burst] * 3:
        plain = step(plain, errors, requests, learned.rate, rule.bad, pearson)
    assert plain >= rule.bound / 2  # what the Pearson dispersion alone would have made of it


# --- healthy bursts the history does not show ----------------------------------------------------


def simulate_family(runs: int, alpha: float, seed: int, **traffic: float) -> int:
    """False rollbacks of ``runs`` healthy deploys through the whole family of bad rates:
    1 h learned before, 1 h watched after, 1 s polls."""
    rule = spec(false_rollback=alpha, evaluations=3600)
    bound, alternatives = rule.bound, rule.alternatives
    fired = 0
    for r in range(runs):
        source = Traffic(random.Random(seed + r), **traffic)
        learned = learn(rule, list(source.polls(0, 3600)), "1h")
        assert isinstance(learned, Learned)
        stats = [0.0] * len(alternatives)
        for errors, requests in source.polls(3600, 3600):
            stats = [
                step(s, errors, requests, learned.rate, bad, learned.dispersion)
                for s, bad in zip(stats, alternatives, strict=True)
            ]
            if max(stats) >= bound:
                fired += 1
                break
    return fired


def test_bursts_on_a_drifting_rate_do_not_roll_back_more_than_stated() -> None:
    """250 healthy hours whose rate drifts by the minute (sigma 0.6) under 4x bursts, at a stated 0.2%.

    A burst on a minute that drifted up is a stretch of several times the healthy rate that
    an hour of history rarely shows. With the dispersion taken as measured, the rule rolled
    back 8 of these 250 deploys (3.2%, sixteen times the stated rate; 9 of 200 on another
    seed). P(Binomial(250, 0.002) > 3) < 0.2%: only a rate above the stated one fails this.
    """
    assert simulate_family(250, 0.002, seed=40_000, drift=0.6) <= 3


def test_the_dispersion_bound_is_above_the_estimate_and_near_it_on_many_blocks() -> None:
    rng = random.Random(8)
    binomial = [(sum(rng.random() < 0.01 for _ in range(100)), 100) for _ in range(3600)]
    measured = dispersion(binomial, 0.01)
    bound = dispersion(binomial, 0.01, 0.999)
    assert 1.2 * measured < bound < 3.0  # 28 blocks of 128 polls at the coarsest scale say little
    steady = [(i % 2, 100) for i in range(60)]  # evenly spaced errors, as bench/detect.py's exporter
    assert dispersion(steady, 0.005, 0.999) == 1.0
    # 0.1 errors a poll over a minute of 0.2 s polls: no block size expects 5 errors, where the
    # chi-square law of the statistic starts to hold; the estimate is kept, not a bound on a guess
    sparse = [(sum(rng.random() < 0.005 for _ in range(20)), 20) for _ in range(300)]
    assert dispersion(sparse, 0.005, 0.999) == dispersion(sparse, 0.005)


def test_a_steady_service_keeps_its_detection_speed() -> None:
    """bench/detect.py's exporter: a minute of 100 requests a poll, an error every other poll.

    Its targets: a step to 20% fires on the first poll that holds it, one to 2% within 60
    polls; the dispersion's confidence bound must not slow a steady service.
    """
    history = [Sample(DEPLOY - 60 + i, None, counts=(i % 2, 100)) for i in range(60)]
    cfg = RuleConfig.model_validate(
        {
            "name": "errors",
            "source": "app",
            "action": "rollback",
            "sequential": {"errors": "e", "total": "t", "bad": "2%", "history": "1m"},
        }
    )
    rule = compile_rule(cfg, interval=1.0, window=3600.0)
    state = start_sequential(rule, DEPLOY, history)
    assert state.evidence[0] == 1.0
    fired = evaluate(rule, state, Sample(DEPLOY + 1, None, counts=(20, 100)), DEPLOY + 1)[0]
    assert fired.state is RuleState.FIRING
    for i in range(1, 61):
        state, _ = evaluate(rule, state, Sample(DEPLOY + i, None, counts=(2, 100)), DEPLOY + i)
        if state.state is RuleState.FIRING:
            break
    assert state.state is RuleState.FIRING and i <= 45, i
