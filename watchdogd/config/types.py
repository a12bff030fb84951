"""Value types of the config: durations, percentages, conditions, secret URLs.

Each is parsed once, when the config is loaded, into a typed value; the rest
of watchdogd never sees the strings again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import BeforeValidator, GetCoreSchemaHandler, PlainSerializer, WithJsonSchema
from pydantic_core import core_schema

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^((\d+(\.\d+)?)(ms|s|m|h|d))+$|^0$"


def parse_duration(value: object) -> float:
    """Seconds from ``500ms``, ``15s``, ``5m``, ``2h``, ``1h30m``, or a bare ``0``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: write it like 500ms, 15s, 5m or 2h")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"invalid duration {value!r}: give a unit, like {value}s or {value}m")
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: write it like 500ms, 15s, 5m or 2h")
    text = value.strip()
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration '{value}': write it like 500ms, 15s, 5m or 2h")
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form: ``5m``, ``1m30s``, ``500ms``, ``0s``."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    rest = seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            count = int(rest // size)
            out.append(f"{count}{unit}")
            rest -= count * size
    if rest:
        out.append(f"{rest:g}s" if rest == int(rest) else f"{rest:.3g}s")
    return "".join(out)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"const": 0}],
            "description": "A duration: 500ms, 15s, 5m, 2h, 1h30m, or 0.",
        }
    ),
]
"""Seconds, written in the config as ``500ms``, ``15s``, ``5m``, ``2h``."""


def parse_percent(value: object) -> float:
    """A fraction from ``10%`` (0.1); a bare number is taken as the fraction itself."""
    if isinstance(value, bool):
        raise ValueError(f"invalid percentage {value!r}: write it like 10%")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"invalid percentage '{value}': write it like 10%") from None
    else:
        raise ValueError(f"invalid percentage '{value}': write it like 10%")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"invalid percentage '{value}': it must be 0% or more")
    return number


Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    PlainSerializer(lambda v: f"{v * 100:g}%", return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A percentage such as 10%, or the fraction 0.1.",
        }
    ),
]

Operator = Literal[">", ">=", "<", "<=", "==", "!="]
OPERATORS: tuple[Operator, ...] = (">=", "<=", "==", "!=", ">", "<")
_OPERATOR_WORDS = {
    ">": "above",
    ">=": "at or above",
    "<": "below",
    "<=": "at or below",
    "==": "equal to",
    "!=": "not equal to",
}


@dataclass(frozen=True, slots=True)
class Condition:
    """A comparison such as ``> 0.05``; ``threshold`` is None for a bare operator.

    A bare operator is what a baseline rule writes: the threshold is then the
    pre-deploy mean, widened by the tolerance.
    """

    op: Operator
    threshold: float | None

    @classmethod
    def parse(cls, value: object) -> Condition:
        if isinstance(value, Condition):
            return value
        if not isinstance(value, str):
            raise ValueError(f'invalid condition {value!r}: write an operator and a number, like "> 0.05"')
        text = value.strip()
        for op in OPERATORS:
            if text.startswith(op):
                rest = text[len(op) :].strip()
                if not rest:
                    return cls(op, None)
                try:
                    threshold = _parse_number(rest)
                except ValueError:
                    break
                return cls(op, threshold)
        raise ValueError(
            f"invalid condition '{value}': write an operator (>, >=, <, <=, ==, !=) "
            'and a number, like "> 0.05"'
        )

    def holds(self, value: float, threshold: float | None = None) -> bool:
        """Whether ``value`` satisfies the comparison. NaN satisfies nothing but ``!=``."""
        limit = self.threshold if threshold is None else threshold
        if limit is None:
            raise ValueError("a bare operator needs a threshold to compare against")
        op = self.op
        if op == ">":
            return value > limit
        if op == ">=":
            return value >= limit
        if op == "<":
            return value < limit
        if op == "<=":
            return value <= limit
        if op == "==":
            return value == limit
        return value != limit

    def describe(self) -> str:
        """In words: ``above 0.05``."""
        word = _OPERATOR_WORDS[self.op]
        return word if self.threshold is None else f"{word} {self.threshold:g}"

    def __str__(self) -> str:
        return self.op if self.threshold is None else f"{self.op} {self.threshold:g}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.to_string_ser_schema()
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {
            "type": "string",
            "pattern": (
                r"^\s*(>=|<=|==|!=|>|<)\s*"
                r"([-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?|inf|Inf|NaN))?\s*$"
            ),
            "description": 'An operator and a number, like "> 0.05"; a bare operator for a baseline.',
        }


def _parse_number(text: str) -> float:
    lowered = text.lower()
    if lowered in ("inf", "+inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    if lowered == "nan":
        return math.nan
    multiplier = 1.0
    if text.endswith("%"):
        text, multiplier = text[:-1], 0.01
    return float(text) * multiplier


class SecretUrl:
    """A URL or DSN that may carry a password or a token.

    ``str()`` and ``repr()`` show it with the password and query values masked;
    only ``secret()`` gives the real thing, for the driver that needs it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def secret(self) -> str:
        return self._value

    @property
    def redacted(self) -> str:
        return redact_url(self._value)

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"SecretUrl({self.redacted!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretUrl) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def _validate(cls, value: object) -> SecretUrl:
        if isinstance(value, SecretUrl):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a URL")
        parts = urlsplit(value.strip())
        if not parts.scheme or not (parts.netloc or parts.path):
            # Not quoted: what does not parse as a URL cannot be masked
            # (``host=db password=...``, ``postgresql//user:password@db``).
            raise ValueError("invalid URL: write it as scheme://host/path")
        return cls(value.strip())

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.redacted, return_schema=core_schema.str_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "format": "uri"}


def redact_url(value: str) -> str:
    """``postgresql://app:***@host/db``: the password and query values masked."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" not in netloc and not parts.query:
        return value.split("#", 1)[0]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        # joined by hand: urlencode would print the mask as %2A%2A%2A
        query = "&".join(f"{quote(k, safe='')}=***" for k, _ in parse_qsl(query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
