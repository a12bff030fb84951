"""``watchdogd ctl status`` as an operator reads it."""

from __future__ import annotations

import pytest

from watchdogd.ctl import event_line, printable, status_lines

NOW = 1_800_000_000.0


def deployment(rules: list[dict[str, object]]) -> dict[str, object]:
    return {
        "id": "d1",
        "service": "api",
        "state": "watching",
        "window_ends_at": "2027-01-15T08:30:00Z",
        "image": "app:v2",
        "rules": rules,
    }


def test_a_rule_without_data_says_why() -> None:
    rules = [
        {"name": "error-rate", "state": "no_data", "value": None, "since": None,
         "reason": "no data (query refused: bad_data: unclosed left parenthesis)"},
        {"name": "p99", "state": "ok", "value": 0.2, "since": None, "reason": "0.2 <= 1"},
    ]  # fmt: skip
    lines = status_lines([deployment(rules)], [], NOW)
    assert lines[2].split() == ["RULE", "STATE", "VALUE", "SINCE", "WHY", "NO", "DATA"]
    assert lines[3].endswith("no data (query refused: bad_data: unclosed left parenthesis)")
    assert "0.2 <= 1" not in lines[4]


def test_rules_that_all_see_keep_four_columns() -> None:
    rules = [{"name": "p99", "state": "ok", "value": 0.2, "since": None, "reason": "0.2 <= 1"}]
    lines = status_lines([deployment(rules)], [], NOW)
    assert lines[2].split() == ["RULE", "STATE", "VALUE", "SINCE"]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("app:v2", "app:v2"),
        ("caf\u00e9 \u65e5\u672c \U0001f680", "caf\u00e9 \u65e5\u672c \U0001f680"),  # letters stay
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # CSI: clear screen, colour
        ("\x1b]8;;https://evil/\x07click\x1b]8;;\x07", "\\x1b]8;;https://evil/\\x07click\\x1b]8;;\\x07"),
        ("ok\rEVIL\x08\x08", "ok\\x0dEVIL\\x08\\x08"),  # overwrite tricks
        ("a\nb\tc", "a\\x0ab\\x09c"),  # one line: a server string never starts another
        ("\x7f\x9b31m\x85", "\\x7f\\x9b31m\\x85"),  # DEL, C1 CSI, C1 NEL
        ("\u202eexe.txt\u202c", "\\u202eexe.txt\\u202c"),  # bidi override
        ("\u2066x\u2069\u200b\ufeff", "\\u2066x\\u2069\\u200b\\ufeff"),  # isolates, zero-width
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("\ud800", "\\ud800"),  # a lone surrogate (JSON allows it) would not even encode
        ("\U000e0001", "\\U000e0001"),  # language tag: a format character past the BMP
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_status_columns_stay_aligned_around_escaped_strings() -> None:
    rules = [
        {"name": "e\x1b[2Jr", "state": "ok", "value": 1.0, "since": None},
        {"name": "p99", "state": "ok", "value": 0.2, "since": None},
    ]
    lines = status_lines([deployment(rules)], [], NOW)
    assert lines[3].startswith("    e\\x1b[2Jr  ok")
    assert lines[4].startswith("    p99        ok")
    assert all(line.isascii() and line.isprintable() for line in lines)


def test_an_event_line_is_escaped_when_printed() -> None:
    line = event_line({"event": "rule_state", "data": {"rule": "r\u202e", "from": "ok", "to": "firing"}})
    assert printable(line) == "rule_state r\\u202e ok -> firing value=-"
