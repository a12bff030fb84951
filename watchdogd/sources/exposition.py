"""The Prometheus text exposition, read for the series some selector wants and no others.

Written here rather than taken from ``prometheus_client.parser``: that parser is
general (every sample of every family becomes objects, label values unescaped
character by character), and at fleet scale it was a third of a poll's work, for
series no rule reads. No maintained parser reads selectively. This one reads each
line's metric name first and parses labels and value only for a name a selector
names (every line, when a selector has no name). Every line is still checked to
start like a sample, so an HTML error page or a JSON body answering 200 is
refused as a whole, as before.

The grammar is the text format's, version 0.0.4: ``name{label="value",...} value
[timestamp]``, ``#`` lines as comments, label values with the escapes ``\\\\``,
``\\"`` and ``\\n``, values as Go's ParseFloat reads them (``NaN``, ``+Inf``,
``-Inf``, exponents).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from watchdogd.errors import SourceError
from watchdogd.selector import Selector
from watchdogd.sources.promrate import MAX_SERIES, Scrape, SeriesKey

_SAMPLE_START = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)([{ \t])")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*([,}])')
_LABELS_END = re.compile(r"[ \t]*}")
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"\\": "\\", '"': '"', "n": "\n"}
_FLOAT = re.compile(r"[+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)", re.IGNORECASE)


def parse_exposition(text: str, wanted: Sequence[Selector], max_series: int = MAX_SERIES) -> Scrape:
    """The values of the series ``wanted`` picks; raises SourceError for a body that will not do.

    A series that comes twice keeps its first value and is reported in
    ``duplicates``; more than ``max_series`` samples refuse the whole scrape.
    """
    names = {s.name for s in wanted}
    every_name = None in names
    values: dict[SeriesKey, float] = {}
    duplicates: set[SeriesKey] = set()
    count = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if line[:1] in (" ", "\t"):
            line = line.lstrip(" \t")  # indented: read as written from its first character
        if not line or line[0] == "#" or line.isspace():
            continue
        count += 1
        if count > max_series:
            raise SourceError(f"more than {max_series} series in the scrape")
        start = _SAMPLE_START.match(line)
        if start is None:
            raise _bad(number, line, "a sample starts with a metric name")
        name = start.group(1)
        if not every_name and name not in names:
            continue
        labels, rest = _labels(line, start.end(2) if start.group(2) == "{" else start.end(1), number)
        value = _value(rest, number, line)
        if not any(s.matches(name, labels) for s in wanted):
            continue
        key = (name, tuple(sorted(labels.items())))
        if key in values:
            duplicates.add(key)
        else:
            values[key] = value
    return Scrape(values, frozenset(duplicates))


def _labels(line: str, at: int, number: int) -> tuple[dict[str, str], str]:
    """The labels from ``at`` (just after ``{``, or the name's end when it has none), and the rest."""
    labels: dict[str, str] = {}
    if line[at - 1] != "{":
        return labels, line[at:]
    end = _LABELS_END.match(line, at)
    if end is not None:
        return labels, line[end.end() :]
    while True:
        pair = _LABEL.match(line, at)
        if pair is None:
            raise _bad(number, line, 'labels are written name="value", separated by commas, closed by }')
        label, raw, closer = pair.groups()
        if label in labels:
            raise _bad(number, line, f"label {label} given twice")
        labels[label] = _UNESCAPE.sub(_unescape, raw) if "\\" in raw else raw
        at = pair.end()
        if closer == "}":
            return labels, line[at:]
        end = _LABELS_END.match(line, at)  # a trailing comma: name="value",}
        if end is not None:
            return labels, line[end.end() :]


def _unescape(match: re.Match[str]) -> str:
    return _ESCAPED.get(match.group(1), match.group(0))


def _value(rest: str, number: int, line: str) -> float:
    """The sample's value, the first field after the labels (a timestamp may follow)."""
    fields = rest.split()
    if not fields or len(fields) > 2:
        raise _bad(number, line, "a sample is its name and labels, a value and an optional timestamp")
    if _FLOAT.fullmatch(fields[0]) is None:
        raise _bad(number, line, f"the value {fields[0][:40]!r} is not a number")
    if len(fields) == 2 and not fields[1].lstrip("-").isdigit():
        raise _bad(number, line, f"the timestamp {fields[1][:40]!r} is not whole milliseconds")
    return float(fields[0])


def _bad(number: int, line: str, why: str) -> SourceError:
    return SourceError(f"not a Prometheus text exposition: line {number}: {why}: {line[:120]!r}")
