"""Sequential detection on counters: the statistics, pure and closed-form.

The question a sequential rule answers at each poll: do the errors and
requests counted since the deploy say, beyond the false-rollback probability
the operator accepts, that the error rate is ``bad`` rather than healthy?

**The statistic.** A CUSUM of quasi-Poisson log-likelihood ratios. A poll that
counted ``x`` errors in ``n`` requests adds

    l = (x * log(p1 / p0) - n * (p1 - p0)) / phi

where ``p0`` is the healthy rate, ``p1`` the bad one and ``phi >= 1`` the
dispersion of the errors; ``S = max(0, S + l)`` and the rule fires when
``S >= h``. ``S`` is the evidence of the worst stretch of polls ending now,
so a long healthy run does not bank credit that would delay the detection of
a later step (Wald's SPRT would).

**Why it holds its false-rollback rate.** Under a healthy service whose errors
come in clumps of ``phi`` (``x = phi * Poisson(n p0 / phi)``), ``exp(l)`` has
mean exactly 1, so the product over a stretch is a martingale and by Ville's
inequality a stretch that starts at a given poll reaches ``h`` with
probability at most ``exp(-h)``. Plain binomial errors (less variable) and a
true rate under ``p0`` make it a supermartingale: the bound still holds.
Over a watch window of ``M`` polls there are at most ``M`` starting points,
so ``h = log(M / alpha)`` bounds the probability of any false alarm in the
window by ``alpha`` (a union bound, not an asymptotic approximation).

**Big steps fast, small ones surely.** A CUSUM tuned to ``p1 = 2%`` weighs
each error by ``log(2% / p0)`` only, and takes seconds to see a step to 20%.
So ``K`` CUSUMs run side by side, at ``bad``, ``4 * bad``, ``16 * bad`` ... up to
50%, and the rule fires when any reaches ``h = log(K * M / alpha)``: the union
bound again, at the price of ``log K`` (about 1) in the bound.

**Overdispersion and time-varying traffic.** Real errors are burstier than
binomial and the traffic changes by the hour. The counts are conditioned on
``n`` poll by poll, so a varying traffic is no problem for the bound; bursts
are, and ``phi`` absorbs them: it is the Pearson dispersion of the
pre-deploy counts, measured on blocks of 1, 2, 4, ... polls (as long as at
least 20 blocks remain) and the largest kept, so that errors correlated over
a few minutes count as the clumps they are. Each block size's dispersion is
taken at its upper confidence bound at level ``1 - alpha`` (Pearson's
chi-square over ``phi`` as a chi-square with ``blocks - 1`` degrees of
freedom), as the healthy rate is: the coarse scales, where a rate drifting by
the minute shows, rest on 20 to 40 blocks and say little, and a dispersion
guessed low is what makes the rule roll back healthy deploys. (Only on block
sizes expecting at least 5 errors, where that law holds: a sparse service's
single polls keep their estimate.) The Pearson
dispersion is an average, though: six 15 s bursts in an hour of quiet polls
barely move it, yet each would look like a bad deploy. So ``phi`` is then
raised (see ``calibrated``) until, for every bad rate weighed and every block
size, the history's blocks have likelihood ratios ``exp(l)`` averaging at
most 1: the condition the bound rests on, checked on the healthy data itself.
Overestimating ``phi`` only makes the rule slower, never noisier
(``r ** (1/phi) - 1 <= (r - 1) / phi``).

**The healthy rate's uncertainty.** A learned ``p0`` is not the estimate but
its upper confidence bound at level ``alpha / 2`` (a score bound on the
quasi-Poisson count): a true healthy rate under the bound keeps the
statistic a supermartingale. The other half of ``alpha`` goes to ``h``.
A written ``healthy`` rate spends all of ``alpha`` on ``h``.

**Where the bound does not hold, and what holds it (measured).** The argument
needs ``E[exp(l)] <= 1`` for every healthy poll. Two things real traffic does
break it, and bench/sequential.py measures both (bench/README.md has the
figures): healthy bursts that reach the ``bad`` rate for a few seconds (a retry
storm at four times the healthy rate, on a minute whose rate drifted up, is a
2 to 4% stretch for a 0.5% service: as far as the counts go, a bad deploy),
and clumps of errors whose size varies (one failing upstream call failing 1, 2
or 10 requests), against which a single large clump carries the evidence at the
high bad rates. An hour of history rarely holds such events, so no
calibration on the history alone can see them: resampling the history's blocks
(a bootstrap) can only recombine the bursts it holds, and fitting the tail of
the history's own CUSUM excursions and extrapolating it to the bound was
tried and barely moved the rate (7 to 5 false rollbacks in 500 windows).
What holds the rate is the margin the dispersion's confidence bound puts on
the measured burstiness: with the dispersion as measured, 1.19% of healthy
two-hour windows rolled back for a stated 0.1%; with its bound at ``1 - alpha``,
none of the same 10,000 (bench/README.md). The price is paid only where the history is
bursty or long enough to measure coarse scales (a steady exporter keeps
``phi = 1``, a minute of a sparse service its estimate; independent errors at
100 requests a poll over an hour of 1 s polls get about 2.7, the coarsest
scale's 28 blocks): there, a step is caught two to three times as late (on
bench/traffic.py's traffic a step to 2% in a median of 364 s instead of 115 s).

**When it cannot.** Too few pre-deploy polls or errors to measure the
dispersion, or an upper bound on the healthy rate that reaches the bad rate:
the rule stays ``no_data`` and says which.

Closed-form on purpose: a CUSUM step is two multiplications and the learning
a few sums, while scipy would add ~40 MiB to a sidecar whose idle budget is
80 MiB, for nothing these formulas need (``statistics.NormalDist`` gives the
one quantile, ``math.lgamma`` the one tail).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

MIN_POLLS = 30
"""Pre-deploy polls with traffic needed to learn from."""
MIN_ERRORS = 10
"""Pre-deploy errors needed to measure the dispersion (with no ``dispersion`` written)."""
MIN_BLOCKS = 20
"""Blocks kept at the coarsest scale the dispersion is measured on."""
CHI2_MIN_EXPECTED = 5.0
"""Errors expected per block for the dispersion's confidence bound to be taken."""
CAP = 2.0
"""The statistic is capped at ``CAP * h``: after a rollback the evidence of the bad
version drains in seconds, instead of keeping the rule firing for as long as it lasted."""


@dataclass(frozen=True, slots=True)
class Sequential:
    """A sequential rule's compiled settings."""

    bad: float
    """The error rate that is bad: ``p1``."""
    healthy: float | None
    """A written healthy rate; None: learned from ``history`` before the deploy."""
    history: float
    dispersion: float | None
    """A written dispersion; None: learned."""
    false_rollback: float
    """The probability of a false alarm over the window the operator accepts: ``alpha``."""
    evaluations: int
    """Polls in the watch window: ``M``."""
    min_requests: int

    @property
    def alternatives(self) -> tuple[float, ...]:
        """The bad rates weighed side by side: ``bad``, then four times as much, up to 50%."""
        rates = [self.bad]
        while rates[-1] * 4 <= 0.5:
            rates.append(rates[-1] * 4)
        return tuple(rates)

    @property
    def bound(self) -> float:
        """``h``: the evidence (natural log) that fires the rule."""
        alpha = self.false_rollback / (1 if self.healthy is not None else 2)
        return threshold(alpha / len(self.alternatives), self.evaluations)


@dataclass(frozen=True, slots=True)
class Learned:
    """What the pre-deploy history says: the healthy rate to test against and the dispersion."""

    rate: float
    """The healthy rate tested against (an upper bound when learned)."""
    estimate: float
    """The observed pre-deploy rate (the written rate when written)."""
    dispersion: float
    errors: float
    requests: float
    polls: int


def threshold(alpha: float, evaluations: int) -> float:
    """``h = log(M / alpha)``: a union bound over the ``M`` polls a stretch can start at."""
    return math.log(max(evaluations, 1) / alpha)


def step(stat: float, errors: float, requests: float, p0: float, p1: float, phi: float) -> float:
    """The CUSUM after one poll: ``max(0, stat + l)``."""
    llr = (errors * math.log(p1 / p0) - requests * (p1 - p0)) / phi
    return max(0.0, stat + llr)


def chi2_quantile(df: int, q: float) -> float:
    """The ``q`` quantile of a chi-square with ``df`` degrees of freedom (Wilson-Hilferty)."""
    z = NormalDist().inv_cdf(q)
    c = 2 / (9 * df)
    return df * max(0.01, 1 - c + z * math.sqrt(c)) ** 3


def dispersion(counts: Sequence[tuple[float, float]], rate: float, confidence: float | None = None) -> float:
    """The largest Pearson dispersion of ``counts`` over blocks of 1, 2, 4, ... polls; at least 1.

    With a ``confidence``, each block size's dispersion is its upper confidence bound
    (Pearson's chi-square over ``phi`` taken as chi-square with ``blocks - 1`` degrees of
    freedom): a scale measured on 20 blocks says little, and a low guess is what makes
    the rule noisy. Only where that law holds, though: with at least ``CHI2_MIN_EXPECTED``
    errors expected per block (Cochran's rule); sparser blocks keep their estimate (their
    statistic is skewed, and the bound would be a guess on a guess).
    """
    if rate <= 0 or rate >= 1:
        return 1.0
    best = 1.0
    size = 1
    while len(counts) // size >= MIN_BLOCKS:
        chi = 0.0
        blocks = 0
        expected_errors = 0.0
        for start in range(0, len(counts) - size + 1, size):
            x = sum(c[0] for c in counts[start : start + size])
            n = sum(c[1] for c in counts[start : start + size])
            if n > 0:
                expected = n * rate
                chi += (x - expected) ** 2 / (expected * (1 - rate))
                blocks += 1
                expected_errors += expected
        if blocks > 1:
            divisor: float = blocks - 1
            # the chi-square law of the statistic holds with enough errors expected per block
            if confidence is not None and expected_errors / blocks >= CHI2_MIN_EXPECTED:
                divisor = chi2_quantile(blocks - 1, 1 - confidence)
            best = max(best, chi / divisor)
        size *= 2
    return best


def upper_rate(errors: float, requests: float, phi: float, alpha: float) -> float:
    """An upper ``1 - alpha`` confidence bound on the rate of ``errors`` in ``requests``.

    The score bound of a Poisson count applied to ``errors / phi`` (the count of
    clumps), scaled back: ``x + z^2/2 + z sqrt(x + z^2/4)``.
    """
    z = NormalDist().inv_cdf(1 - alpha)
    clumps = errors / phi
    bound = clumps + z * z / 2 + z * math.sqrt(clumps + z * z / 4)
    return min(1.0, bound * phi / requests)


def learn(spec: Sequential, counts: Sequence[tuple[float, float]], history_text: str) -> Learned | str:
    """The healthy rate and dispersion from the pre-deploy ``counts`` (errors, requests per poll).

    A text saying why not when the history is too short to say; ``history_text``
    names the span in it.
    """
    polls = [c for c in counts if c[1] > 0]
    errors = sum(c[0] for c in polls)
    requests = sum(c[1] for c in polls)
    if spec.healthy is not None and spec.dispersion is not None:
        return Learned(spec.healthy, spec.healthy, spec.dispersion, errors, requests, len(polls))
    if len(polls) < MIN_POLLS:
        return (
            f"too little history: {len(polls)} polls with traffic in the {history_text} before the deploy,"
            f" {MIN_POLLS} are needed to learn the healthy error rate"
        )
    estimate = errors / requests
    phi = spec.dispersion
    if phi is None:
        if errors < MIN_ERRORS:
            return (
                f"too little history: {errors:g} errors in the {history_text} before the deploy,"
                f" {MIN_ERRORS} are needed to measure how bursty errors are (or write dispersion:)"
            )
        phi = dispersion(
            polls, spec.healthy if spec.healthy is not None else estimate, 1 - spec.false_rollback
        )
    if spec.healthy is not None:
        return Learned(spec.healthy, spec.healthy, phi, errors, requests, len(polls))
    rate = upper_rate(errors, requests, phi, spec.false_rollback / 2)
    if rate >= spec.bad:
        return (
            f"too little history: {errors:g} errors in {requests:g} requests in the {history_text} before"
            f" the deploy only say the healthy rate is under {percent(rate)}, not clearly under the bad"
            f" {percent(spec.bad)}"
        )
    if spec.dispersion is None:
        phi = calibrated(spec, polls, rate, phi)
    return Learned(rate, estimate, phi, errors, requests, len(polls))


def calibrated(spec: Sequential, polls: Sequence[tuple[float, float]], rate: float, phi: float) -> float:
    """``phi`` raised until, on the history, the likelihood ratio of every block averages at most 1.

    For each block size (1, 2, 4, ... polls, at least ``MIN_BLOCKS`` blocks) and each
    bad rate, the smallest ``phi``, at least the given one, with ``mean(exp(l / phi)) <= 1``
    over the history's blocks, by bisection (the mean falls as ``phi`` grows once the
    history's mean ``l`` is negative, as it is against a rate above the healthy one);
    the largest is kept. Computed with the largest term factored out, so that no
    ``exp`` overflows.
    """
    best = phi
    size = 1
    while len(polls) // size >= MIN_BLOCKS:
        blocks = [
            (sum(c[0] for c in polls[i : i + size]), sum(c[1] for c in polls[i : i + size]))
            for i in range(0, len(polls) - size + 1, size)
        ]
        for bad in spec.alternatives:
            gain, cost = math.log(bad / rate), bad - rate
            llrs = [x * gain - n * cost for x, n in blocks]
            top = max(llrs)
            if top <= 0:
                continue

            def excess(candidate: float, llrs: list[float] = llrs, top: float = top) -> float:
                scale = top / candidate
                total = math.fsum(math.exp(v / candidate - scale) for v in llrs)
                return total / len(llrs) - math.exp(-scale)

            if excess(best) <= 0:
                continue
            low, high = best, best * 2
            while excess(high) > 0 and high < 1e6:
                low, high = high, high * 2
            for _ in range(30):
                middle = (low + high) / 2
                low, high = (middle, high) if excess(middle) > 0 else (low, middle)
            best = high
        size *= 2
    return best


def tail(errors: float, requests: float, rate: float, phi: float) -> float:
    """How likely a healthy service counts at least ``errors`` in ``requests``.

    The quasi-Poisson tail ``P(Y >= errors / phi)`` with ``Y ~ Poisson(requests * rate / phi)``,
    summed in log space; 1 when ``errors`` is not above what is expected.
    """
    mean = requests * rate / phi
    k = math.ceil(errors / phi - 1e-9)
    if k <= mean or k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    log_term = k * math.log(mean) - mean - math.lgamma(k + 1)
    total = 0.0
    term = 1.0
    i = k
    # terms fall by mean / (i + 1) < 1 each: a few hundred suffice for 1e-17 of the sum
    while term > 1e-17 * total + 1e-300 and i < k + 10_000:
        total += term
        i += 1
        term *= mean / i
    return math.exp(log_term + math.log(total))


def percent(rate: float) -> str:
    """``0.5%``, ``0.012%``: a rate as an operator writes it."""
    return f"{rate * 100:.2g}%"


def probability(p: float) -> str:
    """``1e-19``, ``0.003``: a probability in words' precision."""
    if p == 0:
        return "less than 1e-300"
    if p >= 0.001:
        return f"{p:.2g}"
    return f"{p:.0e}".replace("e-0", "e-")
