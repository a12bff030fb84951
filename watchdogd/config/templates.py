"""Rule templates: ``templates:`` at the top, ``use: NAME`` with ``args:`` in a rule.

Expanded on the plain YAML data, before validation, so that every later check
sees ordinary rules; the line map is extended so that a problem in a key that
came from a template points at the template's line, and says which rule used
it. Written here rather than with a templating library because the expansion
must keep YAML line numbers and refuse unknown arguments, which text
templating (Jinja, ``string.Template``) does not do.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from watchdogd.errors import ConfigProblem

Loc = tuple[str | int, ...]
LineMap = dict[Loc, int]

PLACEHOLDER = re.compile(r"\$\{args\.([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_ARGS = re.compile(r"\$\{\s*args\b[^}]*\}?")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE_KEYS = ("args", "rule", "description")
_USE_KEYS = ("use", "args")
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    line: int | None
    args: dict[str, Scalar | None]
    """Each argument and its default (None: required)."""
    body: dict[str, Any]


@dataclass(slots=True)
class Expansion:
    """What expanding did: the problems, and which rules came from which template."""

    problems: list[ConfigProblem] = field(default_factory=list)
    used: dict[str, tuple[str, int | None, frozenset[int]]] = field(default_factory=dict)
    """Dotted rule path -> template name, the line of its ``use``, the template's lines."""

    def note(self, problem: ConfigProblem) -> ConfigProblem:
        """``problem`` with the template it came through named, when it did."""
        for path, (name, use_line, template_lines) in self.used.items():
            if problem.field == path or problem.field.startswith((path + ".", path + "[")):
                if problem.line in template_lines:
                    where = f"line {use_line}" if use_line is not None else "a rule"
                    extra = f" (in template '{name}', used at {where})"
                else:
                    extra = f" (rule from template '{name}')"
                return ConfigProblem(problem.file, problem.line, problem.field, problem.message + extra)
        return problem


def expand(data: dict[str, Any], lines: LineMap, filename: str) -> tuple[dict[str, Any], Expansion]:
    """``data`` with ``templates`` taken out and every ``use`` replaced by the rule it makes.

    ``lines`` gains the line of every key a template put in a rule.
    """
    out = Expansion()
    raw = data.get("templates")
    if raw is None and not _any_use(data):
        return data, out
    data = {k: v for k, v in data.items() if k != "templates"}
    templates = _templates(raw, lines, filename, out.problems)
    services = data.get("services")
    if not isinstance(services, dict):
        return data, out
    new_services: dict[str, Any] = {}
    for service, body in services.items():
        rules = body.get("rules") if isinstance(body, dict) else None
        if not isinstance(rules, list):
            new_services[service] = body
            continue
        new_rules = []
        for index, rule in enumerate(rules):
            loc: Loc = ("services", service, "rules", index)
            if isinstance(rule, dict) and "use" in rule:
                rule = _use(rule, loc, templates, lines, filename, out)
            new_rules.append(rule)
        new_services[service] = {**body, "rules": new_rules}
    data["services"] = new_services
    return data, out


def _any_use(data: dict[str, Any]) -> bool:
    services = data.get("services")
    if not isinstance(services, dict):
        return False
    for body in services.values():
        rules = body.get("rules") if isinstance(body, dict) else None
        if isinstance(rules, list) and any(isinstance(r, dict) and "use" in r for r in rules):
            return True
    return False


def _problem(filename: str, lines: LineMap, loc: Loc, message: str) -> ConfigProblem:
    line = None
    for size in range(len(loc), -1, -1):
        line = lines.get(loc[:size])
        if line is not None:
            break
    return ConfigProblem(filename, line, _dotted(loc), message)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _templates(raw: Any, lines: LineMap, filename: str, problems: list[ConfigProblem]) -> dict[str, Template]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(_problem(filename, lines, ("templates",), "a mapping of template names to templates"))
        return {}
    templates: dict[str, Template] = {}
    for name, body in raw.items():
        loc: Loc = ("templates", name)
        if not isinstance(body, dict):
            problems.append(_problem(filename, lines, loc, "a template is a mapping with rule: and args:"))
            continue
        bad = False
        for key in body:
            if key not in _TEMPLATE_KEYS:
                problems.append(
                    _problem(
                        filename,
                        lines,
                        (*loc, key),
                        f"unknown key; a template has {', '.join(_TEMPLATE_KEYS)}",
                    )
                )
                bad = True
        args = _declared(body.get("args"), (*loc, "args"), lines, filename, problems)
        rule = body.get("rule")
        if not isinstance(rule, dict):
            problems.append(_problem(filename, lines, (*loc, "rule"), "required: the rule body, a mapping"))
            continue
        for key in _USE_KEYS:
            if key in rule:
                problems.append(
                    _problem(filename, lines, (*loc, "rule", key), "a template cannot use another")
                )
                bad = True
        used: set[str] = set()
        for sub, text in _strings(rule, (*loc, "rule")):
            for match in _ANY_ARGS.finditer(text):
                whole = PLACEHOLDER.fullmatch(match.group(0))
                if whole is None:
                    problems.append(
                        _problem(
                            filename,
                            lines,
                            sub,
                            f"'{match.group(0)}' is not a placeholder: write ${{args.NAME}}",
                        )
                    )
                    bad = True
                elif whole.group(1) not in args:
                    known = ", ".join(args) or "none"
                    problems.append(
                        _problem(
                            filename, lines, sub, f"unknown argument '{whole.group(1)}' (declared: {known})"
                        )
                    )
                    bad = True
                else:
                    used.add(whole.group(1))
        for arg in args:
            if arg not in used:
                problems.append(
                    _problem(filename, lines, (*loc, "args"), f"argument '{arg}' is never used in the rule")
                )
                bad = True
        if not bad:
            templates[str(name)] = Template(str(name), lines.get(loc), args, rule)
    return templates


def _declared(
    raw: Any, loc: Loc, lines: LineMap, filename: str, problems: list[ConfigProblem]
) -> dict[str, Scalar | None]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        pairs: list[tuple[Any, Any]] = [(name, None) for name in raw]
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        problems.append(_problem(filename, lines, loc, "a list of argument names, or names with defaults"))
        return {}
    out: dict[str, Scalar | None] = {}
    for index, (name, default) in enumerate(pairs):
        where = (*loc, index) if isinstance(raw, list) else (*loc, name)
        if not isinstance(name, str) or not _ARG_NAME.match(name):
            problems.append(
                _problem(filename, lines, where, f"invalid argument name {name!r}: letters, digits, _")
            )
        elif default is not None and not isinstance(default, Scalar):
            problems.append(_problem(filename, lines, where, "a default is a number, a word or true/false"))
        else:
            out[name] = default
    return out


def _strings(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, dict):
        return [item for key, sub in value.items() for item in _strings(sub, (*loc, key))]
    if isinstance(value, list):
        return [item for index, sub in enumerate(value) for item in _strings(sub, (*loc, index))]
    return []


def _use(
    rule: dict[str, Any],
    loc: Loc,
    templates: dict[str, Template],
    lines: LineMap,
    filename: str,
    out: Expansion,
) -> dict[str, Any]:
    name = rule.get("use")
    own = {k: v for k, v in rule.items() if k not in _USE_KEYS}
    template = templates.get(name) if isinstance(name, str) else None
    if template is None:
        close = difflib.get_close_matches(str(name), list(templates), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if isinstance(name, str) and name not in templates and name in _declared_names(lines):
            hint = " (the template itself has problems, reported above)"
        known = ", ".join(templates) or "none"
        out.problems.append(
            _problem(filename, lines, (*loc, "use"), f"no template '{name}' (templates: {known}){hint}")
        )
        return own
    given = rule.get("args", {})
    if given is None:
        given = {}
    if not isinstance(given, dict):
        out.problems.append(
            _problem(filename, lines, (*loc, "args"), "a mapping of argument names to values")
        )
        return own
    values: dict[str, Scalar] = {}
    for arg, value in given.items():
        if arg not in template.args:
            known = ", ".join(template.args) or "none"
            out.problems.append(
                _problem(
                    filename,
                    lines,
                    (*loc, "args", arg),
                    f"template '{template.name}' (line {template.line}) has no argument '{arg}'"
                    f" (its arguments: {known})",
                )
            )
        elif value is None or not isinstance(value, Scalar):
            out.problems.append(
                _problem(
                    filename, lines, (*loc, "args", arg), "an argument is a number, a word or true/false"
                )
            )
        else:
            values[arg] = value
    missing = [a for a, default in template.args.items() if default is None and a not in given]
    if missing:
        out.problems.append(
            _problem(
                filename,
                lines,
                (*loc, "use"),
                f"template '{template.name}' (line {template.line}) needs args: {', '.join(missing)}",
            )
        )
        return own
    for arg, default in template.args.items():
        if arg not in values and default is not None:
            values[arg] = default
    body = _substitute(template.body, values)
    source: Loc = ("templates", template.name, "rule")
    template_lines = set()
    for key, line in list(lines.items()):
        if key[: len(source)] == source and len(key) > len(source):
            sub = key[len(source) :]
            if sub[0] not in own:  # a key written in the rule itself keeps its own line
                lines[(*loc, *sub)] = line
                template_lines.add(line)
    out.used[_dotted(loc)] = (template.name, lines.get((*loc, "use")), frozenset(template_lines))
    return {**body, **own}


def _declared_names(lines: LineMap) -> set[str]:
    return {str(key[1]) for key in lines if len(key) == 2 and key[0] == "templates"}


def _substitute(value: Any, args: dict[str, Scalar]) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return args[whole.group(1)]  # alone: keeps its type (a number stays a number)
        return PLACEHOLDER.sub(lambda m: _text(args[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: _substitute(v, args) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, args) for v in value]
    return value


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
