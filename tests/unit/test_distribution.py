"""The latency rule's statistics: histograms, quantiles with their bounds, the U test, the looks."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdogd.rules.distribution import (
    Histogram,
    Latency,
    add,
    common,
    from_cumulative,
    judge,
    look_alpha,
    mann_whitney,
    quantile,
    quantile_bound,
    total,
)

FOUR = st.lists(st.integers(0, 30), min_size=4, max_size=4)
BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)


def histogram(values: list[float], bounds: tuple[float, ...] = BOUNDS) -> Histogram:
    counts = [0.0] * (len(bounds) + 1)
    for v in values:
        i = next((i for i, le in enumerate(bounds) if v <= le), len(bounds))
        counts[i] += 1
    return bounds, tuple(counts)


def spec(**over: float) -> Latency:
    values = {
        "quantile": 0.99,
        "slower_by": 0.2,
        "confidence": 0.99,
        "min_observations": 200,
        "history": 3600,
    }
    values.update(over)
    return Latency(**values)  # type: ignore[arg-type]


def test_from_cumulative_needs_inf_and_monotone_counts() -> None:
    h = from_cumulative([(0.1, 5), (0.5, 8), (math.inf, 10)])
    assert h == ((0.1, 0.5), (5.0, 3.0, 2.0))
    assert "+Inf" in str(from_cumulative([(0.1, 5)]))
    assert "not cumulative" in str(from_cumulative([(0.1, 5), (0.5, 4), (math.inf, 6)]))


def test_quantile_reads_as_histogram_quantile() -> None:
    h = ((0.1, 0.5), (50.0, 50.0, 0.0))
    assert quantile(h, 0.5) == pytest.approx(0.1)
    assert quantile(h, 0.75) == pytest.approx(0.3)
    assert quantile(((0.1,), (1.0, 9.0)), 0.99) == math.inf  # in the +Inf bucket


def test_common_bounds_are_exact() -> None:
    a = ((0.1, 0.2, 0.5), (1.0, 2.0, 3.0, 4.0))
    b = ((0.2, 1.0), (5.0, 6.0, 7.0))
    ca, cb = common(a, b)
    assert ca == ((0.2,), (3.0, 7.0)) and cb == ((0.2,), (5.0, 13.0))
    assert add(a, b) == ((0.2,), (8.0, 20.0))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=len(BOUNDS) + 1, max_size=len(BOUNDS) + 1), st.floats(0.5, 0.999)
)
def test_the_bounds_bracket_the_estimate(counts: list[int], q: float) -> None:
    h = (BOUNDS, tuple(float(c) for c in counts))
    if total(h) == 0:
        return
    low = quantile_bound(h, q, 0.01, upper=False)
    high = quantile_bound(h, q, 0.01, upper=True)
    assert low <= quantile(h, q) <= high


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=4, max_size=4), st.lists(st.integers(0, 30), min_size=4, max_size=4)
)
def test_u_matches_the_pairwise_count_with_ties_as_halves(a: list[int], b: list[int]) -> None:
    before = ((1.0, 2.0, 3.0), tuple(float(x) for x in a))
    after = ((1.0, 2.0, 3.0), tuple(float(x) for x in b))
    u, p = mann_whitney(before, after)
    pairs = sum(
        bx * ay * (1.0 if j > i else 0.5 if j == i else 0.0)
        for i, bx in enumerate(a)
        for j, ay in enumerate(b)
    )
    assert u == pytest.approx(pairs)
    assert 0 <= p <= 1


def test_the_u_test_matches_a_textbook_tie_corrected_z() -> None:
    before = ((1.0,), (3.0, 1.0))  # values 1,1,1,2
    after = ((1.0,), (1.0, 3.0))  # values 1,2,2,2
    u, p = mann_whitney(before, after)
    # U = 1*(0+1.5) + 3*(3+0.5) = 12; mean 8; ties: groups of 4 and 4: var = 16/12*(9 - 120/56)
    assert u == pytest.approx(12.0)
    z = 4 / math.sqrt(16 / 12 * (9 - 120 / 56))
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))


def test_a_slower_p99_fires_with_the_evidence_in_words() -> None:
    rng = random.Random(1)
    before = histogram([rng.lognormvariate(math.log(0.1), 0.5) for _ in range(60_000)])
    after = histogram([1.4 * rng.lognormvariate(math.log(0.1), 0.5) for _ in range(8_000)])
    verdict = judge(spec(), before, after, look=0)
    assert verdict.fires and verdict.slower
    assert "after vs" in verdict.text and "8,000 vs 60,000 requests, U-test p = " in verdict.text
    assert verdict.text.startswith("p99 0.")
    assert "+" in verdict.text.split(",")[1]


def test_the_same_latency_does_not_fire_and_a_small_slowdown_is_not_enough() -> None:
    rng = random.Random(2)
    before = histogram([rng.lognormvariate(math.log(0.1), 0.5) for _ in range(60_000)])
    same = histogram([rng.lognormvariate(math.log(0.1), 0.5) for _ in range(8_000)])
    assert not judge(spec(), before, same, look=0).fires
    slightly = histogram([1.08 * rng.lognormvariate(math.log(0.1), 0.5) for _ in range(8_000)])
    assert not judge(spec(), before, slightly, look=0).fires  # 8% slower: under the 20% asked


def test_a_p99_above_the_highest_bucket_cannot_be_told() -> None:
    before = ((0.1,), (90.0, 10.0))
    after = ((0.1,), (10.0, 90.0))
    verdict = judge(spec(), before, after, look=0)
    assert not verdict.fires and "cannot tell" in verdict.text


def test_the_looks_spend_at_most_alpha() -> None:
    assert sum(look_alpha(0.01, k) for k in range(60)) <= 0.01
    assert look_alpha(0.01, 0) == 0.005


def test_healthy_deploys_fire_rarely_over_all_looks() -> None:
    """200 healthy deploys, looked at 200, 400, ... 12,800 requests after: at most alpha (+ chance)."""
    fired = 0
    s = spec(confidence=0.9, slower_by=0.0)
    for seed in range(200):
        rng = random.Random(seed)
        before = histogram([rng.lognormvariate(math.log(0.1), 0.6) for _ in range(5_000)])
        after: Histogram | None = None
        seen = 0
        for look in range(7):
            n = 200 * 2**look - seen
            after = add(after, histogram([rng.lognormvariate(math.log(0.1), 0.6) for _ in range(n)]))
            seen += n
            if judge(s, before, after, look).fires:
                fired += 1
                break
    assert fired <= 35  # alpha 10%: P(Binomial(200, 0.1) > 35) < 0.1%
