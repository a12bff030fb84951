"""PromQL series selectors (``name{label=~"5.."}``), parsed and matched.

Pure: used by the config checks and by the scrape source to pick series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

MatchOp = Literal["=", "!=", "=~", "!~"]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OP = re.compile(r"=~|!~|!=|=")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: MatchOp
    value: str
    regex: re.Pattern[str] | None

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self.regex is not None and self.regex.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True, slots=True)
class Selector:
    """A metric name (or none) and label matchers, as PromQL writes them."""

    text: str
    name: str | None
    matchers: tuple[Matcher, ...]

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.name is not None and name != self.name:
            return False
        for matcher in self.matchers:
            actual = name if matcher.label == "__name__" else labels.get(matcher.label, "")
            if not matcher.matches(actual):
                return False
        return True


def parse_selector(text: str) -> Selector:
    """Parse ``name{a="x", b=~"y.*"}``; raises ValueError with the reason."""
    return _parse(text, text.strip(), need_name=True)


def bucket_selector(histogram: str) -> str:
    """``name_bucket{...}`` for the histogram ``name{...}``: the series a latency rule reads (the
    prometheus source queries them, ``watchdogd replay`` range-queries them)."""
    text = histogram.strip()
    name = parse_selector(text).name or ""
    return f"{name}_bucket{text[len(name) :]}" if text.startswith(name) else text


def parse_matchers(text: str) -> Selector:
    """Parse label matchers alone, ``a="x", b!="y"`` with or without braces (no name).

    Any set of matchers is valid, even one that matches everything.
    """
    body = text.strip()
    if not body.startswith("{"):
        body = "{" + body + "}"
    selector = _parse(text, body, need_name=False)
    if selector.name is not None:
        raise ValueError(f"invalid matchers '{text}': label matchers only, no metric name")
    return selector


def _parse(text: str, source: str, need_name: bool) -> Selector:
    pos = 0
    name: str | None = None
    match = _NAME.match(source, pos)
    if match:
        name = match.group(0)
        pos = match.end()
    matchers: list[Matcher] = []
    if pos < len(source) and source[pos] == "{":
        pos += 1
        while True:
            pos = _skip_space(source, pos)
            if pos < len(source) and source[pos] == "}":
                pos += 1
                break
            label = _LABEL.match(source, pos)
            if not label:
                raise ValueError(f"invalid selector '{text}': expected a label name at {pos + 1}")
            pos = _skip_space(source, label.end())
            op = _OP.match(source, pos)
            if not op:
                raise ValueError(f"invalid selector '{text}': expected =, !=, =~ or !~ at {pos + 1}")
            pos = _skip_space(source, op.end())
            value, pos = _read_string(source, pos, text)
            matchers.append(_matcher(label.group(0), op.group(0), value, text))  # type: ignore[arg-type]
            pos = _skip_space(source, pos)
            if pos < len(source) and source[pos] == ",":
                pos += 1
                continue
            if pos < len(source) and source[pos] == "}":
                pos += 1
                break
            raise ValueError(f"invalid selector '{text}': expected ',' or '}}' at {pos + 1}")
    if pos != len(source):
        raise ValueError(f"invalid selector '{text}': unexpected '{source[pos:]}'")
    if need_name and name is None and not any(m.op in ("=", "=~") and not m.matches("") for m in matchers):
        raise ValueError(f"invalid selector '{text}': give a metric name")
    return Selector(text=source, name=name, matchers=tuple(matchers))


def _skip_space(source: str, pos: int) -> int:
    while pos < len(source) and source[pos] in " \t":
        pos += 1
    return pos


def _read_string(source: str, pos: int, text: str) -> tuple[str, int]:
    if pos >= len(source) or source[pos] not in "\"'`":
        raise ValueError(f"invalid selector '{text}': expected a quoted value at {pos + 1}")
    quote = source[pos]
    pos += 1
    out: list[str] = []
    while pos < len(source):
        char = source[pos]
        if char == quote:
            return "".join(out), pos + 1
        if char == "\\" and quote != "`" and pos + 1 < len(source):
            out.append(_ESCAPES.get(source[pos + 1], "\\" + source[pos + 1]))
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise ValueError(f"invalid selector '{text}': unterminated string")


def _matcher(label: str, op: MatchOp, value: str, text: str) -> Matcher:
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid selector '{text}': bad regular expression: {exc}") from None
    return Matcher(label=label, op=op, value=value, regex=regex)
