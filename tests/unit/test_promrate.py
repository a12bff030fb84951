"""Rates, ratios, quantiles and gauges from hand-made scrapes, checked against PromQL's answers."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from watchdogd.selector import parse_selector
from watchdogd.sources.promrate import (
    NO_TRAFFIC,
    NOT_ENOUGH_HISTORY,
    Answer,
    Scrape,
    SeriesStore,
    bucket_quantile,
    extrapolated_rate,
    gauge,
    quantile,
    rate,
    ratio,
    series_key,
)

INF = math.inf
NAN = math.nan


def scrape(values: Mapping[str, float], duplicates: tuple[str, ...] = ()) -> Scrape:
    """``{'m{a="x"}': 1.0}`` -> Scrape; labels written as PromQL writes them."""

    def key(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        selector = parse_selector(text)
        assert selector.name is not None
        return series_key(selector.name, {m.label: m.value for m in selector.matchers})

    return Scrape({key(k): v for k, v in values.items()}, frozenset(key(d) for d in duplicates))


def feed(store: SeriesStore, series: Mapping[float, Mapping[str, float]], horizon: float = 3600) -> None:
    for at, values in sorted(series.items()):
        store.ingest(at, scrape(values), horizon)


# --- extrapolated_rate --------------------------------------------------------------


def test_rate_of_steady_counter_covers_whole_window() -> None:
    points = [(float(t), 10.0 * t) for t in range(1, 11)]
    assert extrapolated_rate(points, 0.0, 10.0) == pytest.approx(10.0)
    assert extrapolated_rate(points, 0.0, 10.0, per_second=False) == pytest.approx(100.0)


def test_counter_reset_adds_value_before_the_drop() -> None:
    # 0 -> 10 -> 20, restart, 5 -> 15: 35 requests in all
    points = [(1.0, 0.0), (2.0, 10.0), (3.0, 20.0), (4.0, 5.0), (5.0, 15.0)]
    increase = extrapolated_rate(points, 0.5, 5.0, per_second=False)
    # sampled 4s, 0.5s to the start (under 1.1 intervals) -> x 4.5/4; starting at 0 the
    # counter cannot be extrapolated further back than its first point
    assert increase == pytest.approx(35.0)
    # restarted between two scrapes: what it counted since the restart, not -97
    assert extrapolated_rate([(1.0, 100.0), (2.0, 3.0)], 1.0, 2.0, per_second=False) == pytest.approx(3.0)


def test_gauge_mode_does_not_treat_a_drop_as_reset() -> None:
    points = [(1.0, 10.0), (2.0, 5.0)]
    assert extrapolated_rate(points, 1.0, 2.0, counter=False, per_second=False) == pytest.approx(-5.0)


def test_extrapolation_limited_to_half_an_interval_when_data_starts_late() -> None:
    # a series that appeared 10s before the end of a 60s window
    points = [(float(t), 2.0 * t) for t in range(50, 61)]
    # 20 seen over 10s, extended by half an interval at the start only
    assert extrapolated_rate(points, 0.0, 60.0, per_second=False) == pytest.approx(20.0 * 10.5 / 10)
    assert extrapolated_rate(points, 0.0, 60.0) == pytest.approx(21.0 / 60)


def test_counter_never_extrapolated_below_zero() -> None:
    points = [(10.0, 5.0), (20.0, 15.0), (30.0, 25.0)]
    # the gap to the start (10s) is under 1.1 intervals, but the counter would
    # have been 0 at t=5: extrapolate 5s back, not 10s
    assert extrapolated_rate(points, 0.0, 30.0, per_second=False) == pytest.approx(25.0)
    # a gauge is extrapolated the whole way
    assert extrapolated_rate(points, 0.0, 30.0, counter=False, per_second=False) == pytest.approx(30.0)


def test_rate_needs_two_points() -> None:
    with pytest.raises(ValueError):
        extrapolated_rate([(1.0, 1.0)], 0.0, 1.0)


# --- bucket_quantile ----------------------------------------------------------------

LATENCY = [(0.05, 95.0), (0.1, 95.0), (0.25, 95.0), (0.5, 95.0), (1.0, 95.0), (2.5, 100.0), (INF, 100.0)]


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.99, LATENCY, 1.0 + 1.5 * (4 / 5)),  # interpolated inside (1, 2.5]
        (0.5, LATENCY, 0.05 * (50 / 95)),  # lowest bucket starts at 0
        (0.5, [(1.0, 10.0), (INF, 10.0)], 0.5),
        (0.9, [(1.0, 5.0), (2.0, 5.0), (INF, 10.0)], 2.0),  # in +Inf: highest finite bound
        (0.5, [(-1.0, 10.0), (INF, 10.0)], -1.0),  # lowest bound <= 0: the bound itself
        (0.5, [(1.0, 10.0), (2.0, 8.0), (INF, 10.0)], 0.5),  # a dip is lifted to the max
        (0.5, [(INF, 10.0), (1.0, 4.0), (2.0, 10.0)], 1.0 + 1.0 / 6),  # order does not matter
        (0.5, [(1.0, 2.0), (1.0, 2.0), (INF, 8.0)], 1.0),  # same bound twice adds up
    ],
)
def test_bucket_quantile_interpolates_like_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    answer = bucket_quantile(q, buckets)
    assert answer.value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("buckets", "reason"),
    [
        ([(1.0, 10.0), (2.0, 10.0)], "no +Inf bucket"),
        ([(INF, 10.0)], "no bucket besides +Inf"),
        ([(1.0, 0.0), (INF, 0.0)], "no observations"),
        ([], "no +Inf bucket"),
    ],
)
def test_bucket_quantile_without_an_answer(buckets: list[tuple[float, float]], reason: str) -> None:
    answer = bucket_quantile(0.99, buckets)
    assert answer.value is None and reason in (answer.reason or "")


def test_bucket_quantile_out_of_range_q() -> None:
    assert bucket_quantile(-0.1, LATENCY).value == -INF
    assert bucket_quantile(1.5, LATENCY).value == INF


# --- measures over a store ------------------------------------------------------------


def requests(at: float, rps: float = 10.0, error_ratio: float = 0.2) -> dict[str, float]:
    total = at * rps
    return {
        'http_requests_total{code="200"}': total * (1 - error_ratio),
        'http_requests_total{code="503"}': total * error_ratio,
        'http_requests_total{code="404"}': 0.0,
        'other_total{code="500"}': 1000 * at,
    }


TOTAL = parse_selector("http_requests_total")
ERRORS = parse_selector('http_requests_total{code=~"5.."}')


def test_rate_and_ratio_with_label_matchers() -> None:
    store = SeriesStore()
    feed(store, {float(t): requests(t) for t in range(0, 31)})
    assert rate(store, TOTAL, 30.0, 10.0).value == pytest.approx(10.0)
    assert rate(store, ERRORS, 30.0, 10.0).value == pytest.approx(2.0)
    assert ratio(store, ERRORS, TOTAL, 30.0, 10.0).value == pytest.approx(0.2)


def test_one_scrape_in_the_window_is_not_enough() -> None:
    store = SeriesStore()
    feed(store, {100.0: requests(100)})
    assert rate(store, TOTAL, 100.0, 60.0) == Answer(None, NOT_ENOUGH_HISTORY)
    feed(store, {101.0: requests(101)})
    assert rate(store, TOTAL, 101.0, 60.0).value is not None
    # a window too short to hold two scrapes
    feed(store, {200.0: requests(200)})
    assert rate(store, TOTAL, 200.0, 60.0) == Answer(None, NOT_ENOUGH_HISTORY)


def test_ratio_without_traffic_and_without_error_series() -> None:
    store = SeriesStore()
    feed(store, {float(t): {'http_requests_total{code="200"}': 7.0} for t in range(5)})
    assert ratio(store, ERRORS, TOTAL, 4.0, 4.0) == Answer(None, NO_TRAFFIC)
    feed(store, {float(t): {'http_requests_total{code="200"}': 7.0 + t} for t in range(5, 10)})
    # no 5xx series exported yet: no errors, not "no data"
    assert ratio(store, ERRORS, TOTAL, 9.0, 4.0).value == 0.0
    missing = ratio(store, ERRORS, parse_selector("nope_total"), 9.0, 4.0)
    assert missing.value is None and "no series match nope_total" in (missing.reason or "")


def test_ratio_rate_survive_a_counter_reset() -> None:
    store = SeriesStore()
    series = {float(t): requests(t) for t in range(0, 11)}
    # the app restarted just after the scrape at t=10: counters start again from 0
    series.update({float(t): requests(t - 10) for t in range(11, 21)})
    feed(store, series)
    assert rate(store, TOTAL, 20.0, 15.0).value == pytest.approx(10.0)
    assert ratio(store, ERRORS, TOTAL, 20.0, 15.0).value == pytest.approx(0.2)


def test_quantile_sums_buckets_across_series() -> None:
    def histogram(at: float) -> dict[str, float]:
        values: dict[str, float] = {}
        # path a: every request fast; path b: 10% of its requests take 2s
        for path, fast, slow in (("a", 90.0, 0.0), ("b", 0.0, 10.0)):
            for le in ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"):
                count = fast + (slow if le in ("2.5", "+Inf") else 0.0)
                values[f'lat_bucket{{path="{path}", le="{le}"}}'] = count * at
            values[f'lat_count{{path="{path}"}}'] = (fast + slow) * at
        return values

    store = SeriesStore()
    feed(store, {float(t): histogram(t) for t in range(0, 21)})
    p99 = quantile(store, parse_selector("lat"), 0.99, 20.0, 10.0)
    # 90% below 0.05s, 10% in (1, 2.5]: rank 99 of 100 is 9/10 into (1, 2.5]
    assert p99.value == pytest.approx(1.0 + 1.5 * 0.9)
    only_a = quantile(store, parse_selector('lat{path="a"}'), 0.99, 20.0, 10.0)
    assert only_a.value == pytest.approx(0.05 * 0.99)
    missing = quantile(store, parse_selector("nope"), 0.99, 20.0, 10.0)
    assert missing.value is None and "no series match" in (missing.reason or "")


def test_gauge_sums_series_of_the_latest_scrape_only() -> None:
    store = SeriesStore()
    feed(store, {1.0: {'queue{q="a"}': 3.0, 'queue{q="b"}': 4.0}, 2.0: {'queue{q="a"}': 5.0}})
    assert gauge(store, parse_selector("queue")).value == 5.0
    assert gauge(store, parse_selector('queue{q="b"}')).reason == 'no series match queue{q="b"}'


def test_nan_and_inf_values() -> None:
    store = SeriesStore()
    feed(
        store,
        {
            1.0: {"c_total": 1.0, "g": 1.0, "up_total": 1.0},
            2.0: {"c_total": NAN, "g": INF, "up_total": 2.0},
            3.0: {"c_total": 3.0, "g": NAN, "up_total": INF},
        },
    )
    nan_rate = rate(store, parse_selector("c_total"), 3.0, 5.0)
    assert nan_rate.value is None and "c_total has the value nan" in (nan_rate.reason or "")
    inf_rate = rate(store, parse_selector("up_total"), 3.0, 5.0)
    assert inf_rate.value is None and "up_total has the value inf" in (inf_rate.reason or "")
    assert gauge(store, parse_selector("g")) == Answer(None, "g is NaN")
    store.ingest(4.0, scrape({"g": INF, "h": INF, 'h{x="1"}': -INF}), 10.0)
    assert gauge(store, parse_selector("g")).value == INF
    both = gauge(store, parse_selector('{__name__="h"}'))
    assert both.value is None and "+Inf and -Inf" in (both.reason or "")


def test_nan_leaves_the_window() -> None:
    store = SeriesStore()
    feed(store, {1.0: {"c_total": 1.0}, 2.0: {"c_total": NAN}})
    feed(store, {float(t): {"c_total": float(t)} for t in range(3, 10)})
    assert rate(store, parse_selector("c_total"), 9.0, 5.0).value == pytest.approx(1.0)


def test_duplicate_series_make_their_measures_no_data() -> None:
    store = SeriesStore()
    for t in range(3):
        store.ingest(float(t), scrape(requests(t), duplicates=('http_requests_total{code="503"}',)), 60.0)
    for answer in (
        rate(store, TOTAL, 2.0, 5.0),
        ratio(store, ERRORS, TOTAL, 2.0, 5.0),
        gauge(store, ERRORS),
    ):
        assert answer.value is None
        assert answer.reason == 'http_requests_total{code="503"} appears more than once in the scrape'
    # series not duplicated still have values
    assert rate(store, parse_selector('http_requests_total{code="200"}'), 2.0, 5.0).value is not None
    store.ingest(3.0, scrape(requests(3)), 60.0)
    assert rate(store, TOTAL, 3.0, 3.0).value == pytest.approx(10.0)


def test_history_is_bounded_by_the_horizon() -> None:
    store = SeriesStore()
    for t in range(1000):
        values = {"steady_total": float(t)}
        if t < 100:
            values[f'gone_total{{id="{t}"}}'] = 1.0
        store.ingest(float(t), scrape(values), 60.0)
    # one series, the last 61 scrapes (60s back, inclusive)
    assert len(store) == 1
    assert store.points == 61
    assert rate(store, parse_selector("steady_total"), 999.0, 60.0).value == pytest.approx(1.0)
    # what is older is gone: a longer window sees 60s and extrapolates half a scrape
    assert rate(store, parse_selector("steady_total"), 999.0, 120.0).value == pytest.approx(60.5 / 120)


def test_max_series_forgets_vanished_series_first() -> None:
    store = SeriesStore(max_series=3)
    store.ingest(1.0, scrape({'m{i="1"}': 1.0, 'm{i="2"}': 1.0}), 60.0)
    store.ingest(2.0, scrape({'m{i="3"}': 1.0, 'm{i="2"}': 2.0}), 60.0)
    store.ingest(3.0, scrape({'m{i="4"}': 1.0, 'm{i="2"}': 3.0}), 60.0)
    # i=1 (gone since t=1) went first; i=3 (gone since t=2) stays
    assert len(store) == 3
    kept = store.matching(parse_selector("m"))
    assert sorted(dict(k[1])["i"] for k in kept) == ["2", "3", "4"]


def test_time_must_move_forward() -> None:
    store = SeriesStore()
    store.ingest(10.0, scrape({"m": 1.0}), 60.0)
    with pytest.raises(ValueError, match="not after"):
        store.ingest(10.0, scrape({"m": 2.0}), 60.0)


def test_a_series_appearing_mid_window_extrapolates_as_prometheus_2_52_does() -> None:
    # 1, 2, 3 at 30s, 45s, 60s of a (0, 60] window: the series starts inside the range.
    # The gap to the start (30s) is over 1.1 intervals: half an interval (7.5s), then the
    # zero point (15s back) does not shorten it: 2 * 37.5 / 30 / 60. Before 2.52: 0.05.
    points = [(30.0, 1.0), (45.0, 2.0), (60.0, 3.0)]
    assert extrapolated_rate(points, 0.0, 60.0) == pytest.approx(2.5 / 60, abs=1e-12)
    # a counter starting near zero is still not extrapolated below zero
    assert extrapolated_rate([(30.0, 0.1), (45.0, 1.1), (60.0, 2.1)], 0.0, 60.0) == pytest.approx(
        2.0 * (30.0 + 1.5 + 0.0) / 30.0 / 60.0, abs=1e-12
    )
