"""``watchdogd replay`` of a latency rule: its CSV of cumulative bucket counts, the series of a range
query by bound, and deploys swept over a history."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.latency_history import csv_rows, cumulative
from watchdogd.config.models import RuleConfig
from watchdogd.model import Sample
from watchdogd.replay import SeriesFileError
from watchdogd.replay_counts import describe_sweep, sweep
from watchdogd.replay_latency import buckets_from_csv, by_bound
from watchdogd.rules import Rule, compile_rule

T0 = 1_700_000_000
STEP = 5.0
WINDOW = 600.0


def _samples(tmp_path: Path, counts: list[list[int]]) -> list[Sample]:
    path = tmp_path / "latency.csv"
    path.write_text("\n".join(["timestamp,le,count", *csv_rows(T0, STEP, counts)]) + "\n")
    return buckets_from_csv(path, STEP)


def _rule() -> Rule:
    config = RuleConfig.model_validate(
        {"name": "slow", "source": "app", "latency": {"histogram": "lat_seconds", "history": "10m"}}
    )
    return compile_rule(config, interval=STEP, window=WINDOW)


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_csv_rows_of_cumulative_counts_become_requests_per_bucket(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(
        "timestamp,le,count\n"
        "# the histogram at three scrapes\n"
        "2023-11-14T22:13:20Z,0.1,10\n1700000000,0.5,15\n1700000000,+Inf,16\n"
        "\n"
        "1700000005,0.1,14\n1700000005,0.5,22\n1700000005,+Inf,25\n"
        "1700000010,+Inf,3\n1700000010,0.5,3\n1700000010,0.1,1\n"  # a reset, in any order
    )
    first, second, third = buckets_from_csv(path, STEP)
    assert (first.time, first.value, first.buckets) == (T0, None, None)
    assert "first point" in str(first.reason)
    assert (second.time, second.value, second.buckets) == (T0 + 5, 9.0, ((0.1, 0.5), (4.0, 3.0, 2.0)))
    assert (third.value, third.buckets) == (3.0, ((0.1, 0.5), (1.0, 2.0, 0.0)))


def test_an_empty_count_is_a_missing_point_and_counting_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    rows = [
        f"{T0 + 5 * i},{le},{'' if i == 1 and le == '1' else 10 * i}"
        for i in range(4)
        for le in ("1", "+Inf")
    ]
    path.write_text("\n".join(rows) + "\n")
    samples = buckets_from_csv(path, STEP)
    assert [s.reason for s in samples[1:3]] == [
        "no point in the series",
        "first point: counting starts at the next one",
    ]
    assert samples[3].buckets == ((1.0,), (10.0, 0.0))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("timestamp,le,count\n0,0.1,1\n0,+Inf\n", "h.csv:3: expected 'timestamp,le,count', got 2 columns"),
        (
            "0,0.1,1\nyesterday,+Inf,2\n",
            "h.csv:2: timestamp 'yesterday' is neither Unix seconds nor RFC 3339",
        ),
        ("0,+Inf,1\n0,fast,1\n", "h.csv:2: le 'fast' is not a bucket bound (a number or +Inf)"),
        ("0,NaN,1\n", "h.csv:1: le 'NaN' is not a bucket bound"),
        ("0,+Inf,many\n", "h.csv:1: count 'many' is not a number"),
        ("0,+Inf,-3\n", "h.csv:1: count -3 is not a cumulative count (0 or more)"),
        ("# one time\n0,+Inf,3\n0,inf,4\n", "h.csv:3: a second count for le=inf at 0 (line 2)"),
        ("0,0.1,3\n5,0.1,4\n", "h.csv: no le=+Inf bucket: it counts every request"),
        ("timestamp,le,count\n\n", "h.csv: no rows in the file"),
    ],
)
def test_a_bad_csv_says_which_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "h.csv").write_text(content)
    with pytest.raises(SeriesFileError) as info:
        buckets_from_csv(tmp_path / "h.csv", STEP)
    assert message in str(info.value)


def test_a_csv_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(SeriesFileError, match=r"nope.csv: cannot read: No such file or directory"):
        buckets_from_csv(tmp_path / "nope.csv", STEP)


def test_a_range_query_s_series_by_bound_one_bucket_however_le_is_written() -> None:
    series = [
        ({"le": "1"}, [(0.0, 4.0), (5.0, None)]),
        ({"le": "1.0"}, [(5.0, 6.0), (10.0, 7.0)]),  # Prometheus 3 writes le as a float
        ({"le": "+Inf"}, [(0.0, 5.0), (5.0, 8.0), (10.0, 9.0)]),
    ]
    assert by_bound(series, "h_bucket") == {
        1.0: {0.0: 4.0, 5.0: 6.0, 10.0: 7.0},
        math.inf: {0.0: 5.0, 5.0: 8.0, 10.0: 9.0},
    }
    with pytest.raises(SeriesFileError, match="h_bucket: a bucket series without a numeric le label"):
        by_bound([({}, [(0.0, 1.0)])], "h_bucket")
    with pytest.raises(SeriesFileError, match="no series match h_bucket between --start and --end"):
        by_bound([], "h_bucket")


def test_a_sweep_over_a_steady_history_rolls_back_no_deploy(tmp_path: Path) -> None:
    samples = _samples(tmp_path, cumulative(3, 600))  # 50 minutes at 5 s
    result = sweep(_rule(), samples, WINDOW, WINDOW)
    assert (result.deploys, result.fired, result.no_data) == (4, (), ())
    assert describe_sweep(result, WINDOW, WINDOW) == [
        "4 deploys, one every 10m, each watched 10m: 0 would have been rolled back"
        " (0.0% of the 4 that could learn)"
    ]


def test_a_sweep_finds_the_deploy_after_which_latency_doubled(tmp_path: Path) -> None:
    samples = _samples(tmp_path, cumulative(3, 600, slow_from=360))  # slower from 30m
    result = sweep(_rule(), samples, WINDOW, WINDOW)
    assert result.deploys == 4 and result.no_data == ()
    assert [deploy - T0 for deploy, _, _ in result.fired] == [1800.0]
    deploy, after, evidence = result.fired[0]
    assert after < 60 and evidence.startswith("p99 ") and "U-test p = " in evidence
    lines = describe_sweep(result, WINDOW, WINDOW)
    assert lines[0].startswith(f"deploy at {_utc(deploy)}: would roll back {after:.0f}s after it: p99 ")
    assert lines[-1].endswith("1 would have been rolled back (25.0% of the 4 that could learn)")


def test_a_sweep_counts_the_deploys_that_could_not_learn(tmp_path: Path) -> None:
    quiet = [[0] * 7 for _ in range(140)]  # no requests for the first 11m40s
    result = sweep(_rule(), _samples(tmp_path, quiet + cumulative(4, 460)), 900.0, WINDOW)
    assert (result.deploys, len(result.fired)) == (3, 0)
    assert [(deploy - T0, reason) for deploy, reason in result.no_data] == [
        (
            600.0,
            "too little history: 0 requests in the 10m before the deploy, 200 are needed (min_observations)",
        )
    ]
    lines = describe_sweep(result, 900.0, WINDOW)
    assert (
        lines[0] == f"deploy at {_utc(T0 + 600)}: no_data: too little history: 0 requests in the 10m"
        " before the deploy, 200 are needed (min_observations)"
    )
    assert lines[-1] == (
        "3 deploys, one every 15m, each watched 10m: 0 would have been rolled back"
        " (0.0% of the 2 that could learn); 1 could not learn (no_data)"
    )
