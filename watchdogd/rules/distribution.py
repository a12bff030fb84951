"""Latency after a deploy against before it: a rank test and a quantile's effect, on histograms.

A latency rule reads a Prometheus histogram's cumulative ``le`` bucket
counters and compares what the requests since the deploy took with what the
requests in ``history`` before it took: the rule fires when the ``quantile``
(p99 by default) after the deploy is at least ``slower_by`` above the one
before, with the stated ``confidence``.

**Binned data.** A histogram only says how many requests fell in each bucket,
so every comparison is made on buckets: each bucket is a group of tied
values. Both sides are first put on the bounds they share (a deploy that
changed the bucket layout is compared on the common bounds, exactly: a
cumulative count at a shared bound is known on both sides).

**The effect: the quantile with its confidence.** A quantile is read as
Prometheus's ``histogram_quantile`` reads it (linear within the bucket it falls
in, the first bucket starting at 0). Its confidence bounds are those of an
order statistic: among ``n`` requests, the rank below which the true
``q``-quantile lies with probability ``1 - a`` is ``n q + z sqrt(n q (1 - q))``
(the normal approximation to the binomial count of requests under it). The
rule fires when the lower bound after the deploy is at least ``1 + slower_by``
times the upper bound before it; each bound spends half the level of the look.

**The rank test.** Beside the effect, a one-sided Mann-Whitney U test, with
mid-ranks over the buckets and the normal approximation with the tie
correction, must reject "after is not slower than before" at the same level: a
shift of the whole distribution, not only of a noisy tail, as Kayenta judges
canaries. Both go into the evidence in words.

**Looking repeatedly.** The requests since the deploy accumulate and the rule
is evaluated at every poll; testing each time at ``1 - confidence`` would
fire on a healthy deploy far more often than stated. So the rule looks only
when the post-deploy count has doubled since its last look (``min_observations``,
twice as many, four times ...) and spends ``alpha / 2`` at the first look,
``alpha / 4`` at the second ...: over the whole watch, at most ``alpha``
(a union bound, however long the deploy is watched).

Closed-form, like watchdogd/rules/sequential.py and for the same reason: the
one normal quantile comes from ``statistics.NormalDist`` rather than scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

Histogram = tuple[tuple[float, ...], tuple[float, ...]]
"""(finite upper bounds, counts per bucket): ``counts`` has one more entry, the bucket above
the highest bound (``+Inf``). Counts, not cumulative counts."""


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency rule's compiled settings."""

    quantile: float
    slower_by: float
    confidence: float
    min_observations: int
    history: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one look at the two histograms says."""

    fires: bool
    slower: bool
    """The point estimates alone say ``slower_by`` or more (the rule is pending)."""
    before: float
    after: float
    before_n: float
    after_n: float
    p_value: float
    text: str


def from_cumulative(bounds: Sequence[tuple[float, float]]) -> Histogram | str:
    """A histogram from cumulative ``(le, count)`` pairs (``+Inf`` included); a text on bad input."""
    pairs = sorted(bounds)
    if not pairs or not math.isinf(pairs[-1][0]):
        return 'the histogram has no le="+Inf" bucket'
    counts: list[float] = []
    previous = 0.0
    for le, cumulative in pairs:
        if math.isnan(le) or math.isnan(cumulative) or cumulative < 0:
            return f"bucket le={le:g} counts {cumulative:g}"
        if cumulative < previous - 1e-9:
            return f"bucket le={le:g} counts {cumulative:g}, fewer than a lower bucket: not cumulative"
        counts.append(max(0.0, cumulative - previous))
        previous = cumulative
    return tuple(le for le, _ in pairs[:-1]), tuple(counts)


def add(total: Histogram | None, more: Histogram) -> Histogram:
    """Two histograms summed; on different bounds, on the bounds they share."""
    if total is None:
        return more
    if total[0] != more[0]:
        total, more = common(total, more)
    return total[0], tuple(a + b for a, b in zip(total[1], more[1], strict=True))


def common(a: Histogram, b: Histogram) -> tuple[Histogram, Histogram]:
    """Both histograms on the finite bounds they share (exact: a shared bound's cumulative count is
    known on both sides)."""
    shared = sorted(set(a[0]) & set(b[0]))
    return _regroup(a, shared), _regroup(b, shared)


def _regroup(h: Histogram, shared: Sequence[float]) -> Histogram:
    bounds, counts = h
    out: list[float] = []
    running = 0.0
    at = 0
    for i, le in enumerate(bounds):
        running += counts[i]
        if at < len(shared) and le == shared[at]:
            out.append(running)
            running = 0.0
            at += 1
    out.append(running + counts[-1])
    return tuple(shared), tuple(out)


def total(h: Histogram) -> float:
    return math.fsum(h[1])


def quantile_at_rank(h: Histogram, rank: float) -> float:
    """The value below which ``rank`` of the requests fall, linear within a bucket (``math.inf``
    when the rank is in the bucket above the highest bound)."""
    bounds, counts = h
    seen = 0.0
    for i, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if i == len(bounds):
                return math.inf
            low = bounds[i - 1] if i > 0 else min(0.0, bounds[0])
            return low + (bounds[i] - low) * (rank - seen) / count
        seen += count
    return bounds[-1] if bounds else math.inf


def quantile(h: Histogram, q: float) -> float:
    """``histogram_quantile(q)`` of the histogram: the point estimate."""
    return quantile_at_rank(h, q * total(h))


def quantile_bound(h: Histogram, q: float, alpha: float, upper: bool) -> float:
    """A one-sided ``1 - alpha`` confidence bound on the ``q``-quantile, from the ranks of an
    order statistic (normal approximation to the binomial)."""
    n = total(h)
    z = NormalDist().inv_cdf(1 - alpha)
    spread = z * math.sqrt(n * q * (1 - q))
    rank = n * q + spread if upper else n * q - spread
    return quantile_at_rank(h, min(n, max(0.0, rank)))


def mann_whitney(before: Histogram, after: Histogram) -> tuple[float, float]:
    """(U of ``after`` over ``before``, one-sided p-value that ``after`` is not slower).

    Mid-ranks over the buckets, the normal approximation with the tie correction.
    """
    n1, n2 = total(after), total(before)
    big_n = n1 + n2
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    u = 0.0
    below = 0.0
    ties = 0.0
    for x, y in zip(after[1], before[1], strict=True):
        u += x * (below + y / 2)
        below += y
        t = x + y
        ties += t**3 - t
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((big_n + 1) - ties / (big_n * (big_n - 1)))
    if variance <= 0:
        return u, 1.0 if u <= mean else 0.0
    z = (u - mean) / math.sqrt(variance)
    return u, _upper_tail(z)


def _upper_tail(z: float) -> float:
    """P(Z >= z) for a standard normal, accurate far into the tail (``erfc``)."""
    return float(0.5 * math.erfc(z / math.sqrt(2)))


def look_alpha(alpha: float, look: int) -> float:
    """The level spent at look ``look`` (0, 1, ...): ``alpha / 2``, ``alpha / 4``, ...: at most
    ``alpha`` over all looks."""
    return float(alpha / 2 ** (look + 1))


def judge(spec: Latency, before: Histogram, after: Histogram, look: int) -> Verdict:
    """One look: does ``after`` show the quantile ``slower_by`` above ``before``, at this look's level?"""
    if before[0] != after[0]:
        before, after = common(before, after)
    alpha = look_alpha(1 - spec.confidence, look)
    q = spec.quantile
    n_before, n_after = total(before), total(after)
    point_before, point_after = quantile(before, q), quantile(after, q)
    high_before = quantile_bound(before, q, alpha / 2, upper=True)
    low_after = quantile_bound(after, q, alpha / 2, upper=False)
    _, p = mann_whitney(before, after)
    factor = 1 + spec.slower_by
    effect = (
        math.isfinite(high_before)
        and high_before >= 0
        and low_after >= factor * high_before
        and low_after > 0
    )
    fires = effect and p <= alpha
    slower = math.isfinite(point_before) and point_after >= factor * point_before and point_after > 0
    text = describe(q, point_before, point_after, n_before, n_after, p)
    if fires:
        text += (
            f"; with confidence {_percent(1 - alpha)}: p{_q(q)} after at least {_seconds(low_after)},"
            f" before at most {_seconds(high_before)}, past the {factor:g}x that fires"
        )
    elif not math.isfinite(high_before):
        text += f"; the p{_q(q)} before is above the highest bucket ({_seconds(before[0][-1])}): cannot tell"
    return Verdict(fires, slower, point_before, point_after, n_before, n_after, p, text)


def describe(q: float, before: float, after: float, n_before: float, n_after: float, p: float) -> str:
    """ "p99 0.41 s after vs 0.30 s before, +37%, 8,120 vs 60,400 requests, U-test p = 2e-9"."""
    change = ""
    if math.isfinite(before) and before > 0 and math.isfinite(after):
        change = f", {after / before - 1:+.0%}"
    return (
        f"p{_q(q)} {_seconds(after)} after vs {_seconds(before)} before{change},"
        f" {n_after:,.0f} vs {n_before:,.0f} requests, U-test p = {_p(p)}"
    )


def _q(q: float) -> str:
    return f"{q * 100:.6g}"


def _seconds(value: float) -> str:
    if math.isinf(value):
        return "above the highest bucket"
    if value >= 0.001:
        return f"{value:.3g} s"
    return f"{value * 1e6:.3g} µs"


def _percent(value: float) -> str:
    return f"{value * 100:.4g}%"


def _p(p: float) -> str:
    if p <= 0:
        return "less than 1e-300"
    if p >= 0.001:
        return f"{p:.2g}"
    return f"{p:.0e}".replace("e-0", "e-")
