"""PromQL series selectors: parsing and matching."""

from __future__ import annotations

import pytest

from watchdogd.selector import parse_selector


def test_name_only() -> None:
    selector = parse_selector("http_requests_total")
    assert (selector.name, selector.matchers) == ("http_requests_total", ())
    assert selector.matches("http_requests_total", {"code": "500"})
    assert not selector.matches("http_requests", {})


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ('m{code="500"}', {"code": "500"}, True),
        ('m{code="500"}', {"code": "5000"}, False),
        ('m{code="500"}', {}, False),
        ('m{code!="500"}', {"code": "200"}, True),
        ('m{code!="500"}', {"code": "500"}, False),
        ('m{code!="500"}', {}, True),
        ('m{code=~"5.."}', {"code": "503"}, True),
        ('m{code=~"5.."}', {"code": "5030"}, False),
        ('m{code=~"5.."}', {"code": "1503"}, False),
        ('m{code!~"5.."}', {"code": "200"}, True),
        ('m{code!~"5.."}', {"code": "503"}, False),
        ('m{code!~"5.."}', {"code": "5030"}, True),
        ('m{code=""}', {}, True),
        ('m{code=~"5..", method="GET"}', {"code": "500", "method": "GET"}, True),
        ('m{code=~"5..", method="GET"}', {"code": "500", "method": "POST"}, False),
        ("m{ code = '500' , }", {"code": "500"}, True),
        ("m{path=`a\\b`}", {"path": "a\\b"}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector(text).matches("m", labels) is matches


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'm{a="say \"hi\""}', 'say "hi"'),
        (r'm{a="tab\there"}', "tab\there"),
        (r'm{a="line\n"}', "line\n"),
        (r'm{a="back\\slash"}', "back\\slash"),
        (r"m{a='it\'s'}", "it's"),
        (r'm{a="\d+"}', "\\d+"),
    ],
)
def test_quoted_values_with_escapes(text: str, value: str) -> None:
    assert parse_selector(text).matchers[0].value == value


def test_escaped_regex_matches_literally() -> None:
    selector = parse_selector(r'm{path=~"/api/v1\\.0/.*"}')
    assert selector.matches("m", {"path": "/api/v1.0/users"})
    assert not selector.matches("m", {"path": "/api/v1x0/users"})


def test_name_from_label_matcher() -> None:
    selector = parse_selector('{__name__="up", job="api"}')
    assert selector.name is None
    assert selector.matches("up", {"job": "api"})
    assert not selector.matches("down", {"job": "api"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('m{code="5', "invalid selector 'm{code=\"5': unterminated string"),
        ("m{code=5}", "invalid selector 'm{code=5}': expected a quoted value at 8"),
        ('m{code=="5"}', "invalid selector 'm{code==\"5\"}': expected a quoted value at 8"),
        ('m{code~"5"}', "invalid selector 'm{code~\"5\"}': expected =, !=, =~ or !~ at 7"),
        ('m{"5"}', "invalid selector 'm{\"5\"}': expected a label name at 3"),
        ('m{a="1" b="2"}', "invalid selector 'm{a=\"1\" b=\"2\"}': expected ',' or '}' at 9"),
        ('m{a="1"} x', "invalid selector 'm{a=\"1\"} x': unexpected ' x'"),
        (
            'm{a=~"("}',
            "invalid selector 'm{a=~\"(\"}': bad regular expression: "
            "missing ), unterminated subpattern at position 0",
        ),
        ('{a=""}', "invalid selector '{a=\"\"}': give a metric name"),
        ('{a!="x"}', "invalid selector '{a!=\"x\"}': give a metric name"),
        ("", "invalid selector '': give a metric name"),
        ("5xx", "invalid selector '5xx': unexpected '5xx'"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_selector(text)
    assert str(info.value) == message
