"""Source parsers given garbage: a Sample (or a scrape) or a SourceError, never another exception."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdogd.errors import SourceError
from watchdogd.model import Sample
from watchdogd.selector import parse_selector
from watchdogd.sources.exposition import parse_exposition
from watchdogd.sources.logs import LineBuffer, LogMatcher, decode_line
from watchdogd.sources.prometheus import parse_query_answer

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AGGREGATIONS = st.sampled_from(["max", "min", "sum", "avg", "single"])
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e999", "-1e999", "0x10", "", " 1 ", "1_000"]),
    st.text(max_size=10),
    st.none(),
    st.booleans(),
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
SERIES = st.fixed_dictionaries(
    {"metric": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)},
    optional={"value": st.lists(NUMBERS, min_size=0, max_size=3)},
)
ANSWERS = st.fixed_dictionaries(
    {"status": st.sampled_from(["success", "error", "weird"])},
    optional={
        "data": st.fixed_dictionaries(
            {"resultType": st.sampled_from(["vector", "scalar", "matrix", "string", "nope"])},
            optional={"result": st.one_of(st.lists(SERIES, max_size=4), st.lists(NUMBERS, max_size=3), JSON)},
        ),
        "errorType": st.text(max_size=10),
        "error": JSON,
    },
)


def query(status: int, body: bytes, aggregation: str) -> None:
    try:
        sample = parse_query_answer(status, body, 100.0, aggregation)
    except SourceError:
        return
    assert isinstance(sample, Sample)
    assert sample.value is None or not math.isnan(sample.value)


@FUZZ
@given(st.integers(min_value=100, max_value=599), st.binary(max_size=300), AGGREGATIONS)
def test_prometheus_garbage_bytes(status: int, body: bytes, aggregation: str) -> None:
    query(status, body, aggregation)


@FUZZ
@given(st.integers(min_value=100, max_value=599), st.one_of(ANSWERS, JSON), AGGREGATIONS)
def test_prometheus_answers_of_every_shape(status: int, doc: Any, aggregation: str) -> None:
    query(status, json.dumps(doc, allow_nan=True).encode(), aggregation)


def test_prometheus_deeply_nested_answer() -> None:
    query(200, b"[" * 100_000 + b"]" * 100_000, "max")
    query(200, b'{"status": "success", "data": ' * 50_000, "max")


def test_prometheus_huge_and_infinite_numbers() -> None:
    for values in (["1", "+Inf"], ["-Inf", "+Inf"], ["1e308", "1e308"], ["NaN", "NaN"]):
        for aggregation in ("max", "min", "sum", "avg"):
            result = [{"metric": {}, "value": [1, v]} for v in values]
            doc = {"status": "success", "data": {"resultType": "vector", "result": result}}
            query(200, json.dumps(doc).encode(), aggregation)
    big = b'{"status":"success","data":{"resultType":"scalar","result":[1, ' + b"9" * 500 + b"]}}"
    query(200, big, "max")


WANTED = [parse_selector("errors"), parse_selector('http_requests_total{code=~"5.."}')]
LINE = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda name, labels, value: f"{name}{labels} {value}",
        st.sampled_from(["errors", "http_requests_total", "x_bucket", "a:b"]),
        st.sampled_from(["", '{code="500"}', '{code="500",code="500"}', "{", '{code="\\x"}', '{le="+Inf"}']),
        st.one_of(NUMBERS.map(str), st.just("1 2 3")),
    ),
    st.sampled_from(["# TYPE errors gauge", "# TYPE errors counter", "# HELP errors", "# TYPE errors nope"]),
)


@FUZZ
@given(st.lists(LINE, max_size=12))
def test_exposition_bodies(lines: list[str]) -> None:
    try:
        scrape = parse_exposition("\n".join(lines) + "\n", WANTED, max_series=20)
    except SourceError:
        return
    assert all(isinstance(v, float) for v in scrape.values.values())


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(min_value=1, max_value=64))
def test_line_buffer_bounds_every_line(chunks: list[bytes], limit: int) -> None:
    buffer = LineBuffer(limit)
    lines = [line for chunk in chunks for line in buffer.feed(chunk)]
    rest = buffer.flush()
    assert all(len(line) <= limit for line in lines)
    assert rest is None or len(rest) <= limit
    assert len(lines) == b"".join(chunks).count(b"\n")


def test_line_buffer_huge_line_without_newline() -> None:
    buffer = LineBuffer(1024)
    for _ in range(200):
        assert buffer.feed(b"x" * 65536) == []
    rest = buffer.flush()
    assert rest is not None and len(rest) == 1024


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=20), st.floats(min_value=0, max_value=1e9))
def test_log_matcher_counts_decoded_garbage(raw: list[bytes], now: float) -> None:
    matcher = LogMatcher()
    matcher.watch("ERROR", over=60.0)
    matcher.watch(r"\d{3,}", over=10.0)
    lines = [decode_line(line) for line in raw]
    matcher.feed(lines, now)
    expected = sum("ERROR" in line for line in lines)
    assert matcher.count("ERROR", 60.0, now) == expected == matcher.total("ERROR")
    assert matcher.lines == len(lines)
