"""The exposition read selectively: the same values as the Prometheus client's own parser for every
series a selector wants, the others skipped, garbage refused as a whole."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from watchdogd.errors import SourceError
from watchdogd.selector import parse_selector
from watchdogd.sources.exposition import parse_exposition
from watchdogd.sources.promrate import series_key

BODY = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/a"} 1027 1700000000000
http_requests_total{code="500",path="/a"} 3
http_requests_total{ code = "404" , path="/b" , } 7
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 5
latency_seconds_bucket{le="+Inf"} 9
latency_seconds_count 9
app_info{version="v1 \\"blue\\"\\n\\\\"} 1
up 1
  temperature -Inf
	# an indented comment
ratio NaN

other_metric{a="b"} not-read-so-not-checked
"""


def test_only_the_wanted_series_are_read_with_their_labels_unescaped() -> None:
    wanted = [
        parse_selector('http_requests_total{code=~"5..|404"}'),
        parse_selector("latency_seconds_bucket"),
        parse_selector("app_info"),
        parse_selector("temperature"),
        parse_selector("ratio"),
    ]
    scrape = parse_exposition(BODY, wanted)
    values = {k: v for k, v in scrape.values.items() if not math.isnan(v)}
    assert values == {
        ("http_requests_total", (("code", "500"), ("path", "/a"))): 3.0,
        ("http_requests_total", (("code", "404"), ("path", "/b"))): 7.0,
        ("latency_seconds_bucket", (("le", "0.1"),)): 5.0,
        ("latency_seconds_bucket", (("le", "+Inf"),)): 9.0,
        ("app_info", (("version", 'v1 "blue"\n\\'),)): 1.0,
        ("temperature", ()): -math.inf,
    }
    assert math.isnan(scrape.values[("ratio", ())])


def test_a_series_given_twice_keeps_its_first_value_and_is_reported() -> None:
    scrape = parse_exposition('a{x="1"} 1\na{x="1"} 2\n', [parse_selector("a")])
    key = ("a", (("x", "1"),))
    assert scrape.values == {key: 1.0} and scrape.duplicates == {key}


NOT_A_SAMPLE = "a sample starts with a metric name"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("<!DOCTYPE html>\n<html>down for maintenance</html>\n", "line 1: " + NOT_A_SAMPLE),
        ('{"status": "ok"}\n', "line 1: " + NOT_A_SAMPLE),
        ("OK\n", "line 1: " + NOT_A_SAMPLE),
        ("up 1\nwanted{a=b} 1\n", 'line 2: labels are written name="value"'),
        ('wanted{a="1"\n', 'line 1: labels are written name="value"'),
        ("wanted twelve\n", "line 1: the value 'twelve' is not a number"),
        ("wanted 1 2 3\n", "a value and an optional timestamp"),
        ("wanted 1 soon\n", "the timestamp 'soon' is not whole milliseconds"),
        ('wanted{a="1",a="2"} 1\n', "label a given twice"),
        ("wanted 1_000\n", "is not a number"),
    ],
)
def test_a_body_that_is_not_an_exposition_is_refused_with_the_line(body: str, why: str) -> None:
    with pytest.raises(SourceError, match="not a Prometheus text exposition") as raised:
        parse_exposition(body, [parse_selector("wanted")])
    assert why in str(raised.value)


def test_too_many_series_refuse_the_scrape_even_unread_ones() -> None:
    body = "".join(f'x{{n="{n}"}} 1\n' for n in range(11))
    with pytest.raises(SourceError, match="more than 10 series"):
        parse_exposition(body, [parse_selector("wanted")], max_series=10)


def test_a_selector_without_a_name_reads_every_line() -> None:
    scrape = parse_exposition('a{job="x"} 1\nb{job="x"} 2\nc{job="y"} 3\n', [parse_selector('{job="x"}')])
    assert sorted(scrape.values) == [("a", (("job", "x"),)), ("b", (("job", "x"),))]


NAMES = st.sampled_from(["errors", "http_requests_total", "x_bucket", "a:b", "_u"])
LABEL_NAMES = st.sampled_from(["code", "le", "path", "a_b"])
LABEL_VALUES = st.text(alphabet=st.sampled_from(list('ab5 .+-\\"\n{},=é')), max_size=6)
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e3", "1.5E-3", ".5", "5."]),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


SAMPLE = st.builds(
    lambda name, labels, value, stamp: (
        name
        + ("{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else "")
        + f" {value}"
        + (f" {stamp}" if stamp is not None else "")
    ),
    NAMES,
    st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=3),
    VALUES,
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**41)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(SAMPLE, max_size=12), st.sampled_from(["errors", "x_bucket", 'http_requests_total{code=~"5.*"}'])
)
def test_the_same_values_as_the_prometheus_clients_parser(lines: list[str], selector: str) -> None:
    body = "\n".join(lines) + "\n"
    wanted = [parse_selector(selector)]
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = series_key(sample.name, sample.labels)
            if wanted[0].matches(sample.name, sample.labels) and key not in expected:
                expected[key] = float(sample.value)
    got = parse_exposition(body, wanted).values
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == value or (math.isnan(got[key]) and math.isnan(value))
