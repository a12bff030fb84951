"""How often a sequential rule rolls back a healthy deploy: the false-rollback rate, simulated.

Each window is one healthy deploy: ``--history`` of traffic before it (what the
rule learns its healthy rate and dispersion from), then ``--window`` watched
after it, polled every ``--interval``. The traffic is ``bench/traffic.py``'s:
Poisson requests between 10 and 200 per second on a daily shape (each window
starting at a random time of day), an error rate of 0.5% drifting by the
minute (log-normal, sigma 0.3), healthy bursts at four times the rate (about
three an hour, 5 to 15 s each) and errors in clumps (mean 2). Every poll goes
through the engine as the daemon runs it (``start_sequential`` once, then
``evaluate`` per poll); a window counts as a false rollback when the rule
reaches ``firing``. Windows are seeded by their number: a run is reproducible.

The rate is reported with its two-sided 95% Clopper-Pearson interval (exact,
from the beta quantiles, computed here by bisection on the binomial tail:
no scipy); the verdict compares the interval's upper end with the configured
``false_rollback``.

Run: ``.venv/bin/python bench/sequential.py [--windows 10000] [--processes 2] [--false-rollback 0.1%]``
(about 1 ms of CPU per simulated minute; 10,000 two-hour windows took 398 s
on two processes of this machine).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import verdict
from bench.traffic import Traffic
from watchdogd.config.models import RuleConfig
from watchdogd.config.types import parse_duration
from watchdogd.model import RuleState, Sample
from watchdogd.rules import compile_rule, evaluate, start_sequential

DEPLOY = 1_800_000_000.0


def rule_config(args: argparse.Namespace) -> RuleConfig:
    return RuleConfig.model_validate(
        {
            "name": "errors",
            "source": "app",
            "sequential": {
                "errors": 'http_requests_total{code=~"5.."}',
                "total": "http_requests_total",
                "bad": args.bad,
                "history": args.history,
                "false_rollback": args.false_rollback,
                **({"dispersion": args.dispersion} if args.dispersion is not None else {}),
            },
        }
    )


def one_window(index: int, args: argparse.Namespace) -> tuple[bool, bool, float]:
    """(learned, fired, seconds after the deploy it fired) of window ``index``."""
    interval = parse_duration(args.interval)
    history = parse_duration(args.history)
    window = parse_duration(args.window)
    rule = compile_rule(rule_config(args), interval=interval, window=window)
    traffic = Traffic(random.Random(args.seed + index), base=args.healthy, interval=interval)
    before = round(history / interval)
    samples = []
    for i in range(before):
        t = (i + 1) * interval
        at = DEPLOY - history + t
        samples.append(Sample(at, None, counts=traffic.poll(t)))
    state = start_sequential(rule, DEPLOY, samples)
    if state.baseline is None:
        return False, False, 0.0
    for i in range(round(window / interval)):
        t = history + (i + 1) * interval
        at = DEPLOY + (i + 1) * interval
        counts = traffic.poll(t, args.after)
        state, _ = evaluate(rule, state, Sample(at, None, counts=counts), at)
        if state.state is RuleState.FIRING:
            return True, True, at - DEPLOY
    return True, False, 0.0


def _work(job: tuple[int, int, argparse.Namespace]) -> list[tuple[bool, bool, float]]:
    first, last, args = job
    return [one_window(i, args) for i in range(first, last)]


def binomial_tail_upper(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space."""
    if k <= 0:
        return 1.0
    total = 0.0
    for i in range(k, n + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        log_term += i * math.log(p) + (n - i) * math.log1p(-p) if 0 < p < 1 else 0.0
        term = math.exp(log_term)
        total += term
        if term < 1e-18 * total and i > n * p:
            break
    return min(1.0, total)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion ``k / n``."""
    tail = (1 - level) / 2

    def solve(f: object, target: float) -> float:
        low, high = 0.0, 1.0
        for _ in range(100):
            mid = (low + high) / 2
            if f(mid) < target:  # type: ignore[operator]
                low = mid
            else:
                high = mid
        return (low + high) / 2

    lower = 0.0 if k == 0 else solve(lambda p: binomial_tail_upper(k, n, p), tail)
    upper = 1.0 if k == n else solve(lambda p: binomial_tail_upper(k + 1, n, p), 1 - tail)
    return lower, upper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=10_000, help="healthy deploys simulated")
    parser.add_argument(
        "--processes", type=int, default=2, choices=(1, 2), help="worker processes (at most 2)"
    )
    parser.add_argument("--false-rollback", default="0.1%", help="the rule's false_rollback")
    parser.add_argument("--bad", default="2%", help="the rule's bad rate")
    parser.add_argument("--healthy", type=float, default=0.005, help="the traffic's mean healthy error rate")
    parser.add_argument("--history", default="1h", help="learned from before the deploy")
    parser.add_argument("--window", default="2h", help="watched after the deploy")
    parser.add_argument("--interval", default="1s", help="poll interval")
    parser.add_argument("--dispersion", type=float, default=None, help="written instead of learned")
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument(
        "--after",
        type=float,
        default=None,
        help="not healthy: the error rate from the deploy on (how soon the rule fires on this traffic)",
    )
    parser.add_argument("--chunk", type=int, default=25, help="windows per task")
    args = parser.parse_args()
    jobs = [(i, min(i + args.chunk, args.windows), args) for i in range(0, args.windows, args.chunk)]
    began = time.monotonic()
    results: list[tuple[bool, bool, float]] = []
    with multiprocessing.Pool(args.processes) as pool:
        for done in pool.imap_unordered(_work, jobs):
            results += done
            if len(results) % 500 < args.chunk:
                print(
                    f"  {len(results)} of {args.windows} windows, {sum(r[1] for r in results)} fired,"
                    f" {time.monotonic() - began:.0f}s",
                    flush=True,
                )
    learned = [r for r in results if r[0]]
    fired = [r[2] for r in learned if r[1]]
    n, k = len(learned), len(fired)
    configured = rule_config(args).sequential
    assert configured is not None
    low, high = clopper_pearson(k, n) if n else (0.0, 1.0)
    print()
    print(
        f"{args.windows} {'healthy ' if args.after is None else ''}windows: {args.history} learned,"
        f" {args.window} watched"
        f" at {args.interval} polls,"
        f" bad {args.bad}, false_rollback {args.false_rollback}; {time.monotonic() - began:.0f}s on"
        f" {args.processes} processes"
    )
    print(f"  rule learned (not no_data) in {n} windows; {len(results) - n} stayed no_data")
    if fired and args.after is None:
        print(f"  fired after {', '.join(f'{s:.0f}s' for s in sorted(fired))}")
    rate = k / n if n else 0.0
    if args.after is not None:
        times = sorted(fired)
        median = times[len(times) // 2] if times else float("nan")
        print(
            f"  a step to {args.after:.2%} at the deploy: fired in {k} of {n}, median {median:.0f}s after it"
        )
        return
    print(
        f"  false rollbacks {k} of {n}: {rate:.4%}, 95% Clopper-Pearson interval [{low:.4%}, {high:.4%}]"
        f" (configured {configured.false_rollback * 100:.3g}%: upper end at most the configured rate:"
        f" {verdict(high <= configured.false_rollback)}; point estimate under it:"
        f" {verdict(rate <= configured.false_rollback)})"
    )


if __name__ == "__main__":
    main()
