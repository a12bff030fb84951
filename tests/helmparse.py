"""The parser of tests/helmrender.py: Go templates' text and actions, and their blocks.

``{{-``/``-}}`` trim the whitespace (newlines included) beside an action; comments
``{{/* */}}`` vanish; ``if``/``else if``/``else``, ``range``, ``with`` and ``define``
open blocks that ``end`` closes; ``define``s are collected by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tests.helmfuncs import TemplateError

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.DOTALL)
_KEYWORD = re.compile(r"(if|else|end|range|with|define|template)\b\s*(.*)", re.DOTALL)
_SPACE = " \t\r\n"


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipeline: str


@dataclass
class Call:  # {{ template "name" pipeline }}
    name: str
    pipeline: str


@dataclass
class Block:
    kind: str  # if, range, with, define
    pipeline: str
    body: list[Node] = field(default_factory=list)
    otherwise: list[Node] = field(default_factory=list)


Node = Text | Action | Call | Block


def _lex(source: str) -> list[Text | tuple[str, str]]:
    """Text pieces and (keyword, rest) actions, with whitespace trimmed where ``{{-`` or ``-}}`` asks."""
    pieces: list[Text | tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip(_SPACE)
        if match.group(1):
            text = text.rstrip(_SPACE)
        pieces.append(Text(text))
        inner = match.group(2).strip(_SPACE)
        trim_next = bool(match.group(3))
        position = match.end()
        if inner.startswith("/*"):
            if not inner.endswith("*/"):
                raise TemplateError(f"unclosed comment: {inner[:40]!r}")
            continue
        keyword = _KEYWORD.fullmatch(inner)
        pieces.append((keyword.group(1), keyword.group(2).strip()) if keyword else ("action", inner))
    tail = source[position:]
    pieces.append(Text(tail.lstrip(_SPACE) if trim_next else tail))
    return pieces


def parse(source: str, defines: dict[str, list[Node]] | None = None) -> list[Node]:
    """The template's nodes; its ``define``s go into ``defines``."""
    root: list[Node] = []
    # open blocks: the block, whether in its else part, and whether an ``else if`` opened it
    stack: list[tuple[Block, bool, bool]] = []

    def target() -> list[Node]:
        if not stack:
            return root
        block, in_else, _ = stack[-1]
        return block.otherwise if in_else else block.body

    for piece in _lex(source):
        if isinstance(piece, Text):
            if piece.text:
                target().append(piece)
            continue
        keyword, rest = piece
        if keyword == "action":
            target().append(Action(rest))
        elif keyword == "template":
            name, _, argument = rest.partition(" ")
            target().append(Call(json.loads(name), argument.strip()))
        elif keyword in ("if", "range", "with", "define"):
            if not rest:
                raise TemplateError(f"{keyword} without an expression")
            if keyword == "define" and stack:
                raise TemplateError("define inside a block")
            block = Block(keyword, rest)
            target().append(block)
            stack.append((block, False, False))
        elif keyword == "else":
            if not stack or stack[-1][1] or stack[-1][0].kind not in ("if", "range", "with"):
                raise TemplateError("else outside an if, range or with")
            block = stack[-1][0]
            stack[-1] = (block, True, stack[-1][2])
            chained = _KEYWORD.fullmatch(rest) if rest else None
            if chained and chained.group(1) in ("if", "with"):
                inner = Block(chained.group(1), chained.group(2).strip())
                block.otherwise.append(inner)
                stack.append((inner, False, True))
            elif rest:
                raise TemplateError(f"else {rest!r}")
        else:
            if rest:
                raise TemplateError(f"end {rest!r}")
            if not stack:
                raise TemplateError("end without an open block")
            while True:  # an ``end`` closes an ``else if`` chain whole
                block, _, chained_else = stack.pop()
                if not chained_else:
                    break
            if block.kind == "define":
                root.remove(block)
                if defines is not None:
                    defines[json.loads(block.pipeline)] = block.body
    if stack:
        raise TemplateError(f"{stack[-1][0].kind} {stack[-1][0].pipeline!r} is never ended")
    return root
