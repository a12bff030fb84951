"""A renderer for the Helm templates of the chart in ``helm/``, to test it without a ``helm`` binary.

Why our own: there is no ``helm`` in Debian or on PyPI, and the Python Go-template
packages on PyPI either wrap Go through CGo (a Go toolchain to build, and still
neither Helm's functions nor ``include``) or are unmaintained bindings. Helm's
language is Go's ``text/template`` plus Sprig's functions; this implements the
part the chart uses, with their semantics (tests/unit/test_helm.py renders a
tricky template and compares it with Helm's output, written by hand):

- actions ``{{ }}``, ``{{-``/``-}}`` trimming the whitespace (newlines included)
  beside them, comments ``{{/* */}}`` (parsed by tests/helmparse.py);
- ``if``/``else if``/``else``, ``range`` (``$i, $v :=``; maps by sorted key;
  ``else`` when empty), ``with``, ``define``, ``template``, each closed by ``end``;
- variables ``$x := ...``/``$x = ...`` scoped to their block, ``$`` the data the
  template was executed with; fields ``.a.b``, ``$x.a``, ``$.a``; parentheses;
- pipelines ``a | f x`` (the piped value is the last argument); ``and``/``or``
  return an operand and stop at the first that decides;
- ``include``, and the functions of tests/helmfuncs.py;
- the chart: values files merged as Helm merges them, checked against
  ``values.schema.json`` (Helm refuses to render otherwise), numbers read as
  float64 as Helm does, ``.Release``, ``.Chart``, ``.Template.Name``/``.BasePath``,
  ``_*.tpl`` files for definitions only, ``NOTES.txt`` on request.

Stricter than Helm on purpose: a missing value, or nil printed, is an error
(Helm prints nothing), so that a typo in a template or in values fails a test
instead of rendering a blank.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.helmfuncs import FUNCTIONS, TemplateError, go_string, truthy
from tests.helmparse import Action, Block, Call, Node, Text, parse

__all__ = ["Renderer", "TemplateError", "chart_values", "merge", "parse", "render_chart"]

# --- pipelines -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![\w.])
    | (?P<declare>:=|=)
    | (?P<punct>[|(),])
    | (?P<variable>\$\w*(?:\.\w+)*)
    | (?P<field>(?:\.\w+)+|\.)
    | (?P<ident>[A-Za-z_]\w*)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.lastgroup is None:
            raise TemplateError(f"cannot read {text[position:]!r} in {text!r}")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return out


class _Scope:
    def __init__(self, parent: _Scope | None, variables: dict[str, Any] | None = None) -> None:
        self.parent = parent
        self.variables = variables or {}

    def get(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.variables:
                return scope.variables[name]
            scope = scope.parent
        raise TemplateError(f"undefined variable {name}")

    def set(self, name: str, value: Any) -> None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.variables:
                scope.variables[name] = value
                return
            scope = scope.parent
        raise TemplateError(f"undefined variable {name} assigned")


class Renderer:
    def __init__(self, root: Mapping[str, Any], defines: dict[str, list[Node]] | None = None) -> None:
        self.root = root
        self.defines = defines if defines is not None else {}
        self.depth = 0

    def render(self, nodes: list[Node], dot: Any, scope: _Scope | None = None) -> str:
        if scope is None:
            scope = _Scope(None, {"$": dot})
        out: list[str] = []
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                value, declared = self.pipeline(node.pipeline, dot, scope)
                if not declared:
                    out.append(go_string(value))
            elif isinstance(node, Call):
                argument = self.pipeline(node.pipeline, dot, scope)[0] if node.pipeline else None
                out.append(self.include(node.name, argument))
            elif node.kind in ("if", "with"):
                inner = _Scope(scope)
                value, _ = self.pipeline(node.pipeline, dot, inner)
                if truthy(value):
                    out.append(self.render(node.body, value if node.kind == "with" else dot, inner))
                else:
                    out.append(self.render(node.otherwise, dot, inner))
            else:
                out.append(self.range(node, dot, scope))
        return "".join(out)

    def range(self, node: Block, dot: Any, scope: _Scope) -> str:
        names: list[str] = []
        pipeline = node.pipeline
        declaration = re.fullmatch(r"(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=(.*)", pipeline, re.DOTALL)
        if declaration:
            names = [name for name in declaration.groups()[:2] if name]
            pipeline = declaration.group(3)
        items, _ = self.pipeline(pipeline, dot, scope)
        if items is None:
            pairs: list[tuple[Any, Any]] = []
        elif isinstance(items, dict):
            pairs = [(key, items[key]) for key in sorted(items)]
        elif isinstance(items, list):
            pairs = list(enumerate(items))
        else:
            raise TemplateError(f"range can't iterate over {items!r}")
        if not pairs:
            return self.render(node.otherwise, dot, _Scope(scope))
        out = []
        for key, item in pairs:
            values = {names[0]: item} if len(names) == 1 else dict(zip(names, (key, item), strict=False))
            out.append(self.render(node.body, item, _Scope(scope, values)))
        return "".join(out)

    def include(self, name: str, argument: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f'no template "{name}"')
        self.depth += 1
        try:
            if self.depth > 100:
                raise TemplateError(f"template {name!r} includes itself too deep")
            return self.render(self.defines[name], argument, _Scope(None, {"$": argument}))
        finally:
            self.depth -= 1

    def pipeline(self, text: str, dot: Any, scope: _Scope) -> tuple[Any, bool]:
        """The pipeline's value, and whether it declared or assigned a variable (which prints nothing)."""
        tokens = _tokens(text)
        declared = False
        if len(tokens) > 2 and tokens[0][0] == "variable" and tokens[1][0] == "declare":
            variable, operator = tokens[0][1], tokens[1][1]
            value = self._pipeline(tokens[2:], dot, scope, text)
            if operator == ":=":
                scope.variables[variable] = value
            else:
                scope.set(variable, value)
            return value, True
        return self._pipeline(tokens, dot, scope, text), declared

    def _pipeline(self, tokens: list[tuple[str, str]], dot: Any, scope: _Scope, text: str) -> Any:
        commands: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for token in tokens:
            if token == ("punct", "|") and depth == 0:
                commands.append([])
                continue
            if token == ("punct", "("):
                depth += 1
            elif token == ("punct", ")"):
                depth -= 1
            commands[-1].append(token)
        if depth:
            raise TemplateError(f"unbalanced parentheses in {text!r}")
        value: Any = None
        for index, command in enumerate(commands):
            value = self.command(command, dot, scope, text, (value,) if index else ())
        return value

    def command(
        self, words: list[tuple[str, str]], dot: Any, scope: _Scope, text: str, piped: tuple[Any, ...]
    ) -> Any:
        operands = _operands(words, text)
        head = operands[0]
        if len(head) == 1 and head[0][0] == "ident" and head[0][1] not in ("true", "false", "nil"):
            name = head[0][1]
            rest = operands[1:]
            if name in ("and", "or"):
                return self.logic(name, rest, dot, scope, text, piped)
            args = [self.operand(operand, dot, scope, text) for operand in rest] + list(piped)
            if name == "include":
                if len(args) != 2:
                    raise TemplateError(f"include takes a name and a value: {text!r}")
                return self.include(args[0], args[1])
            if name not in FUNCTIONS:
                raise TemplateError(f"unknown function {name!r} in {text!r}")
            try:
                return FUNCTIONS[name](*args)
            except TypeError as error:
                raise TemplateError(f"{name}: {error} in {text!r}") from error
        if len(operands) > 1 or piped:
            raise TemplateError(f"can't give an argument to a non-function in {text!r}")
        return self.operand(head, dot, scope, text)

    def logic(
        self,
        name: str,
        operands: list[list[tuple[str, str]]],
        dot: Any,
        scope: _Scope,
        text: str,
        piped: tuple[Any, ...],
    ) -> Any:
        if len(operands) + len(piped) < 1:
            raise TemplateError(f"{name} without operands in {text!r}")
        value: Any = None
        evaluations = [lambda o=o: self.operand(o, dot, scope, text) for o in operands]
        evaluations += [lambda p=p: p for p in piped]
        for evaluate in evaluations:
            value = evaluate()
            if truthy(value) == (name == "or"):
                return value
        return value

    def operand(self, words: list[tuple[str, str]], dot: Any, scope: _Scope, text: str) -> Any:
        kind, word = words[0]
        if kind == "punct" and word == "(":
            return self._pipeline(words[1:-1], dot, scope, text)
        if len(words) != 1:
            raise TemplateError(f"cannot read {words!r} in {text!r}")
        if kind == "string":
            return json.loads(word)
        if kind == "raw":
            return word[1:-1]
        if kind == "number":
            return float(word) if re.search(r"[.eE]", word) else int(word)
        if kind == "ident":
            if word in ("true", "false"):
                return word == "true"
            if word == "nil":
                return None
            return self.command([(kind, word)], dot, scope, text, ())
        if kind == "field":
            return _walk(dot, word, word)
        if kind == "variable":
            name, _, path = word.partition(".")
            return _walk(scope.get(name), "." + path if path else "", word)
        raise TemplateError(f"unexpected {word!r} in {text!r}")


def _operands(words: list[tuple[str, str]], text: str) -> list[list[tuple[str, str]]]:
    """A command's words grouped: a parenthesized pipeline is one operand."""
    operands: list[list[tuple[str, str]]] = []
    depth = 0
    for word in words:
        if depth == 0:
            operands.append([])
        operands[-1].append(word)
        if word == ("punct", "("):
            depth += 1
        elif word == ("punct", ")"):
            depth -= 1
    if not operands:
        raise TemplateError(f"empty command in {text!r}")
    return operands


def _walk(base: Any, path: str, word: str) -> Any:
    for part in filter(None, path.split(".")):
        if not isinstance(base, Mapping) or part not in base:
            raise TemplateError(f"{word}: no value {part!r}")
        base = base[part]
    return base


# --- the chart -------------------------------------------------------------------------------


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


def _as_float64(value: Any) -> Any:
    """Helm reads every number of the values as a float64."""
    if isinstance(value, dict):
        return {key: _as_float64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_float64(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def chart_values(chart: Path, values_files: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The chart's values merged with ``values_files``, checked against ``values.schema.json``."""
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for extra in values_files:
        values = merge(values, yaml.safe_load(extra.read_text()) or {})
    schema_file = chart / "values.schema.json"
    if schema_file.exists():
        schema = json.loads(schema_file.read_text())
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"- {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors]
            raise TemplateError("values don't meet the schema:\n" + "\n".join(lines))
    return dict(values)


def _chart_key(key: str) -> str:
    """``.Chart``'s field for a Chart.yaml key: appVersion is .AppVersion, apiVersion .APIVersion."""
    return "APIVersion" if key == "apiVersion" else key[:1].upper() + key[1:]


def render_chart(
    chart: Path,
    values_files: tuple[Path, ...] = (),
    release: str = "release",
    namespace: str = "default",
    notes: bool = False,
) -> dict[str, str]:
    """Every manifest template of ``chart`` rendered, by file name (``helm template``); NOTES.txt if asked."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = _as_float64(chart_values(chart, values_files))
    chart_object = {_chart_key(key): value for key, value in meta.items()}
    base_path = f"{meta['name']}/templates"
    defines: dict[str, list[Node]] = {}
    templates: dict[str, list[Node]] = {}
    for path in sorted((chart / "templates").iterdir()):
        nodes = parse(path.read_text(), defines)
        defines[f"{base_path}/{path.name}"] = nodes
        templates[path.name] = nodes
    rendered = {}
    for name, nodes in templates.items():
        if name.startswith("_") or (name == "NOTES.txt" and not notes):
            continue
        root = {
            "Values": values,
            "Release": {
                "Name": release,
                "Namespace": namespace,
                "Service": "Helm",
                "IsInstall": True,
                "IsUpgrade": False,
                "Revision": 1,
            },
            "Chart": chart_object,
            "Template": {"Name": f"{base_path}/{name}", "BasePath": base_path},
        }
        rendered[name] = Renderer(root, defines).render(nodes, root)
    return rendered
