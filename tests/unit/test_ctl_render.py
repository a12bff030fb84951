"""``watchdogd ctl status`` as an operator reads it."""

from __future__ import annotations

from watchdogd.ctl import status_lines

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
