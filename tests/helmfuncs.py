"""The functions of Helm's template language that the chart uses, with Go's and Sprig's semantics.

Printing follows Go's ``fmt``: Helm reads every number of the values as a
float64, so ``{{ .Values.x }}`` of 1000000 prints ``1e+06`` and ``printf "%d"``
of a value prints ``%!d(float64=2)``, exactly as the real thing would; ``toYaml``
goes through JSON and prints integral numbers as integers. Comparing an integer
literal with a value (``gt .Values.replicaCount 1``) is Go's "incompatible types
for comparison" error: the chart writes ``gt (int .Values.replicaCount) 1``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import yaml


class TemplateError(Exception):
    pass


def go_float(value: float) -> str:
    """``fmt.Sprint(float64)``: strconv's shortest 'g', exponent from 1e+06 up and below 1e-04."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # the decimal point's place after the first len(text) digits
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return prefix + text + "0" * (point - len(text))
    return f"{prefix}{text[:point]}.{text[point:]}"


def go_string(value: Any) -> str:
    """``fmt.Sprint`` of one value, refusing what Helm would print as a Go map or nothing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise TemplateError("a nil value printed (Helm prints nothing: a typo in a template or in values?)")
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, (dict, list)):
        raise TemplateError(f"a {type(value).__name__} printed without toYaml: {value!r}")
    return str(value)


def go_quote(text: str) -> str:
    """``%q``: Go's double-quoted string, printable Unicode kept as is."""
    out = ['"']
    named = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in named:
            out.append(named[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def truthy(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    return not (value == 0 or value in ("", [], {}))


def _jsonable(value: Any) -> Any:
    """What sigs.k8s.io/yaml sees after its JSON round trip: integral floats are integers."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def to_yaml(value: Any) -> str:
    """Helm's ``toYaml``: keys sorted, no trailing newline."""
    dumped = yaml.safe_dump(_jsonable(value), default_flow_style=False, sort_keys=True, width=1 << 20)
    if dumped.endswith("\n...\n"):  # a bare scalar
        dumped = dumped[: -len("...\n")]
    return dumped.removesuffix("\n")


def _sprint(*values: Any) -> str:
    """``fmt.Sprint``: a space between two operands when neither is a string."""
    out = ""
    for index, value in enumerate(values):
        if index and not isinstance(value, str) and not isinstance(values[index - 1], str):
            out += " "
        out += go_string(value)
    return out


_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")


def _printf(form: str, *args: Any) -> str:
    """``fmt.Sprintf`` for %s, %d, %v, %q and %%, with Go's complaint for a wrong type."""
    values = list(args)

    def verb(match: re.Match[str]) -> str:
        flags, width, _precision, letter = match.groups()
        if letter == "%":
            return "%"
        if not values:
            return f"%!{letter}(MISSING)"
        value = values.pop(0)
        if letter == "d":
            if isinstance(value, bool) or not isinstance(value, int):
                kind = "float64" if isinstance(value, float) else type(value).__name__
                return f"%!d({kind}={go_string(value)})"
            text = str(value)
        elif letter in ("s", "v"):
            text = go_string(value)
        elif letter == "q":
            text = go_quote(go_string(value))
        else:
            raise TemplateError(f"printf verb %{letter} is not supported here")
        if width:
            text = text.ljust(int(width)) if "-" in flags else text.rjust(int(width))
        return text

    out = _VERB.sub(verb, form)
    if values:
        out += "%!(EXTRA " + ", ".join(go_string(v) for v in values) + ")"
    return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _compare(name: str, op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        if _kind(left) != _kind(right) or _kind(left) == "other" or (name != "eq" and _kind(left) == "bool"):
            raise TemplateError(
                f"error calling {name}: incompatible types for comparison ({left!r}, {right!r})"
            )
        return op(left, right)

    return compare


def _eq(left: Any, *rights: Any) -> bool:
    return any(_compare("eq", lambda a, b: a == b)(left, right) for right in rights)


def _trunc(count: int, text: str) -> str:
    if count < 0:
        return text[count:] if len(text) + count > 0 else text
    return text[:count]


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return 0
    if value is None:
        return 0
    return int(value)


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(f"required: {message}")
    return value


def _fail(message: str) -> str:
    raise TemplateError(f"fail: {message}")


def _to_string(value: Any) -> str:
    return go_string(value) if value is not None else "<nil>"


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": to_yaml,
    "indent": lambda width, text: "\n".join(" " * width + line for line in str(text).split("\n")),
    "nindent": lambda width, text: "\n" + "\n".join(" " * width + line for line in str(text).split("\n")),
    "quote": lambda *values: " ".join(go_quote(go_string(v)) for v in values if v is not None),
    "squote": lambda *values: " ".join(f"'{go_string(v)}'" for v in values if v is not None),
    "default": lambda fallback, *value: value[0] if value and truthy(value[0]) else fallback,
    "empty": lambda value: not truthy(value),
    "not": lambda value: not truthy(value),
    "print": _sprint,
    "printf": _printf,
    "trunc": _trunc,
    "trimSuffix": lambda suffix, text: text.removesuffix(suffix),
    "trimPrefix": lambda prefix, text: text.removeprefix(prefix),
    "trim": lambda text: text.strip(" \t\r\n"),
    "replace": lambda old, new, text: text.replace(old, new),
    "contains": lambda part, text: part in text,
    "hasPrefix": lambda prefix, text: text.startswith(prefix),
    "lower": lambda text: text.lower(),
    "upper": lambda text: text.upper(),
    "sha256sum": lambda text: hashlib.sha256(text.encode()).hexdigest(),
    "int": _to_int,
    "toString": _to_string,
    "len": len,
    "required": _required,
    "fail": _fail,
    "eq": _eq,
    "ne": lambda left, right: not _eq(left, right),
    "lt": _compare("lt", lambda a, b: a < b),
    "le": _compare("le", lambda a, b: a <= b),
    "gt": _compare("gt", lambda a, b: a > b),
    "ge": _compare("ge", lambda a, b: a >= b),
}
