"""A tiny renderer for the subset of Helm templates the chart in ``helm/`` uses.

The chart keeps within this subset so that it is checked here without a
``helm`` binary. Supported, with Go template semantics:

- ``{{ expr }}`` with ``{{-`` / ``-}}`` trimming the whitespace beside it;
- fields: ``.Values.a.b``, ``.Release.Name``, ``.Chart.Name`` (and ``.Version``,
  ``.AppVersion``), ``.`` (the current item inside ``range``), ``$`` (the root);
- ``if EXPR`` / ``else`` / ``end`` and ``range EXPR`` / ``end`` (lists, or maps by key);
- pipelines ``a | f x``: the piped value is the last argument;
- functions ``toYaml``, ``nindent N``, ``indent N``, ``quote``, ``default X``, ``not``;
- string (``"..."``) and integer literals.

Anything else is an error, and so is a missing value (Helm would print nothing):
a typo in a template or in values must fail the test, not render a blank.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.DOTALL)


class TemplateError(Exception):
    pass


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipeline: str


@dataclass
class Block:
    kind: str  # "if" or "range"
    pipeline: str
    body: list[Node] = field(default_factory=list)
    otherwise: list[Node] = field(default_factory=list)


Node = Text | Action | Block


def _lex(source: str) -> list[Text | tuple[str, str]]:
    """Text pieces and actions, with whitespace trimmed where ``{{-`` or ``-}}`` asks."""
    pieces: list[Text | tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces.append(Text(text))
        inner = match.group(2).strip()
        keyword, _, rest = inner.partition(" ")
        if keyword in ("if", "range", "else", "end"):
            pieces.append((keyword, rest.strip()))
        else:
            pieces.append(("action", inner))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = source[position:]
    pieces.append(Text(tail.lstrip() if trim_next else tail))
    return pieces


def parse(source: str) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[Block, bool]] = []  # the open block, and whether we are in its else part

    def target() -> list[Node]:
        if not stack:
            return root
        block, in_else = stack[-1]
        return block.otherwise if in_else else block.body

    for piece in _lex(source):
        if isinstance(piece, Text):
            target().append(piece)
            continue
        keyword, rest = piece
        if keyword == "action":
            target().append(Action(rest))
        elif keyword in ("if", "range"):
            if not rest:
                raise TemplateError(f"{keyword} without an expression")
            block = Block(keyword, rest)
            target().append(block)
            stack.append((block, False))
        elif keyword == "else":
            if not stack or stack[-1][0].kind != "if" or stack[-1][1] or rest:
                raise TemplateError("else outside an if (or 'else if', which is not supported)")
            stack[-1] = (stack[-1][0], True)
        else:
            if not stack:
                raise TemplateError("end without an open block")
            stack.pop()
    if stack:
        raise TemplateError(f"{stack[-1][0].kind} {stack[-1][0].pipeline!r} is never ended")
    return root


def to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=1 << 20).rstrip("\n")


def _go_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise TemplateError("nil value printed")
    if isinstance(value, (dict, list)):
        raise TemplateError(f"a {type(value).__name__} printed without toYaml: {value!r}")
    return str(value)


def _truthy(value: Any) -> bool:
    return not (value is None or value is False or value == 0 or value in ("", [], {}))


def _indent(width: int, text: Any) -> str:
    pad = " " * int(width)
    return "\n".join(pad + line for line in str(text).split("\n"))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": to_yaml,
    "indent": _indent,
    "nindent": lambda width, text: "\n" + _indent(width, text),
    "quote": lambda value: json.dumps(_go_string(value)),
    "default": lambda fallback, value: value if _truthy(value) else fallback,
    "not": lambda value: not _truthy(value),
}


class Renderer:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def render(self, nodes: list[Node], dot: Any) -> str:
        out: list[str] = []
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                out.append(_go_string(self.pipeline(node.pipeline, dot)))
            elif node.kind == "if":
                branch = node.body if _truthy(self.pipeline(node.pipeline, dot)) else node.otherwise
                out.append(self.render(branch, dot))
            else:
                items = self.pipeline(node.pipeline, dot)
                if isinstance(items, dict):
                    items = [items[key] for key in sorted(items)]
                if items is None:
                    items = []
                if not isinstance(items, list):
                    raise TemplateError(f"range over a {type(items).__name__}")
                out.extend(self.render(node.body, item) for item in items)
        return "".join(out)

    def pipeline(self, text: str, dot: Any) -> Any:
        commands = [c.strip() for c in _split_pipes(text)]
        value: Any = None
        for index, command in enumerate(commands):
            words = shlex.split(command, posix=False)
            if not words:
                raise TemplateError(f"empty command in {text!r}")
            name, args = words[0], [self.term(word, dot) for word in words[1:]]
            if index > 0:
                args.append(value)
            if name in FUNCTIONS:
                value = FUNCTIONS[name](*args)
            elif index == 0 and not args:
                value = self.term(name, dot)
            else:
                raise TemplateError(f"unknown function {name!r} in {text!r}")
        return value

    def term(self, word: str, dot: Any) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if word in ("true", "false"):
            return word == "true"
        if word == ".":
            return dot
        if word.startswith("$"):
            base: Any = self.root
            path = word[1:]
        elif word.startswith("."):
            base, path = dot, word
        else:
            raise TemplateError(f"unsupported term {word!r}")
        for part in filter(None, path.split(".")):
            if not isinstance(base, Mapping) or part not in base:
                raise TemplateError(f"{word}: no value {part!r}")
            base = base[part]
        return base


def _split_pipes(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "|" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def merge(base: Any, override: Any) -> Any:
    """Helm's merge of values files: maps deeply, everything else replaced, null deletes a key."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value) if key in base else value
        return merged
    return override


def render_chart(
    chart: Path, values_files: tuple[Path, ...] = (), release: str = "release", namespace: str = "default"
) -> dict[str, str]:
    """Every template of ``chart`` rendered, by file name (``helm template``, roughly)."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for extra in values_files:
        values = merge(values, yaml.safe_load(extra.read_text()) or {})
    root = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {key[:1].upper() + key[1:]: value for key, value in meta.items()},
    }
    renderer = Renderer(root)
    rendered = {}
    for template in sorted((chart / "templates").glob("*.yaml")):
        rendered[template.name] = renderer.render(parse(template.read_text()), root)
    return rendered
