"""Series notation for offline rule tests, as promtool writes it.

``a+bxn`` is the n+1 values ``a, a+b, ..., a+n*b``; ``a-bxn`` counts down;
``axn`` is n+1 copies of ``a``; a plain number is one value; ``_`` is one
missing sample and ``_xn`` is n of them. Values are separated by spaces.
"""

from __future__ import annotations

import math
import re

from watchdogd.errors import SeriesError

_NUMBER = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[Ii]nf|NaN)"
_TOKEN = re.compile(rf"^(?P<start>{_NUMBER})(?:(?P<sign>[-+])(?P<step>{_NUMBER}))?(?:x(?P<times>\d+))?$")
_MISSING = re.compile(r"^_(?:x(?P<times>\d+))?$")

MAX_VALUES = 1_000_000
"""Longer series are refused: a typo like ``0x100000000`` must not eat the memory."""


def parse_series(text: str) -> list[float | None]:
    """The values ``text`` stands for, None for each missing sample."""
    values: list[float | None] = []
    for token in text.split():
        missing = _MISSING.match(token)
        if missing:
            count = int(missing["times"]) if missing["times"] is not None else 1
            _room(values, count, token)
            values.extend([None] * count)
            continue
        match = _TOKEN.match(token)
        if match is None:
            raise SeriesError(
                f"cannot read '{token}': write a number, 'a+bxn', 'axn', '_' or '_xn' (like '0.01x8 0.2x30')"
            )
        start = float(match["start"])
        step = float(match["step"]) if match["step"] is not None else 0.0
        if match["sign"] == "-":
            step = -step
        if match["times"] is None:
            if match["step"] is not None:
                raise SeriesError(f"cannot read '{token}': a step needs a count, like '{token}x10'")
            values.append(start)
            continue
        count = int(match["times"]) + 1
        _room(values, count, token)
        values.extend(start + i * step if step else start for i in range(count))
    return values


def format_series(values: list[float | None]) -> str:
    """A compact notation for ``values`` (runs of equal values folded), for messages."""
    out: list[str] = []
    i = 0
    while i < len(values):
        value = values[i]
        j = i
        while j + 1 < len(values) and _same(values[j + 1], value):
            j += 1
        text = "_" if value is None else f"{value:g}"
        out.append(text if j == i else f"{text}x{j - i}" if value is not None else f"_x{j - i + 1}")
        i = j + 1
    return " ".join(out)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _room(values: list[float | None], count: int, token: str) -> None:
    if len(values) + count > MAX_VALUES:
        raise SeriesError(f"'{token}' makes the series longer than {MAX_VALUES} values")
