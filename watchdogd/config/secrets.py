"""Secrets kept out of the config file: ``X_file: PATH`` and ``X_env: VARIABLE`` for every secret ``X``.

Every field that holds a secret (a DSN, a URL that carries a password or a
token, a password, a bearer token, a header value) also takes ``X_file`` (the
file's text, its trailing newline dropped; a relative path is taken from the
config file's folder) or ``X_env`` (an environment variable). For a mapping of
secrets (``headers``) both are mappings: ``headers_file: {Authorization:
/run/secrets/auth}``. They are resolved on the plain YAML data when the config
is loaded, so a reload (SIGHUP) reads them again and a rotated secret needs no
edit of the config; the value then goes where an inline one would, masked the
same way in ``repr``, logs, ``watchdogd check`` and errors. A model that reads
its own ``X_file`` later (a notification target) keeps it.

``${VAR}`` inside values was considered and left out: PromQL, regular
expressions and rule templates (``${args.x}``) use the same characters, and a
whole-field ``X_env`` says the same thing without ambiguity.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr

from watchdogd.config.types import SecretUrl
from watchdogd.errors import ConfigProblem

Loc = tuple[str | int, ...]
LineMap = dict[Loc, int]
_SUFFIXES = ("_file", "_env")


@functools.cache
def secret_fields(model: type[BaseModel]) -> dict[str, bool]:
    """The secret fields of ``model`` (by their names in the file): True for a mapping of secrets.

    Computed once per model: a fleet's config walks the same models thousands of times.
    """
    out: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        annotation = _unwrap(info.annotation)
        if get_origin(annotation) is dict and _unwrap(get_args(annotation)[1]) in _SECRET_TYPES:
            out[info.alias or name] = True
        elif annotation in _SECRET_TYPES:
            out[info.alias or name] = False
    return out


_SECRET_TYPES = (SecretStr, SecretUrl)


@functools.cache
def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s fields by their names in the file, with their annotations."""
    return {info.alias or name: info.annotation for name, info in model.model_fields.items()}


def _unwrap(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``; a union of several is left alone."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            members = [m for m in get_args(annotation) if m is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model(annotation: Any, node: dict[Any, Any]) -> type[BaseModel] | None:
    """The model ``node`` is validated as: a union's member picked by the ``type`` tag."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, UnionType):
        for member in get_args(annotation):
            member = _unwrap(member)
            tagged = (
                isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields
            )
            if tagged and node.get("type") in get_args(member.model_fields["type"].annotation):
                return member  # type: ignore[no-any-return]
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def resolve(data: Any, lines: LineMap, filename: str, base_dir: Path) -> tuple[Any, list[ConfigProblem]]:
    """``data`` with every ``X_file``/``X_env`` of a secret field replaced by ``X`` and its value."""
    from watchdogd.config.models import Config

    problems: list[ConfigProblem] = []
    return _walk(data, Config, (), lines, filename, base_dir, problems), problems


def _walk(
    node: Any,
    annotation: Any,
    loc: Loc,
    lines: LineMap,
    filename: str,
    base_dir: Path,
    problems: list[ConfigProblem],
) -> Any:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if isinstance(node, list):
        item = get_args(annotation)[0] if origin in (tuple, list) and get_args(annotation) else None
        return [_walk(v, item, (*loc, i), lines, filename, base_dir, problems) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if origin is dict:
        value_type = get_args(annotation)[1]
        return {
            k: _walk(v, value_type, (*loc, k), lines, filename, base_dir, problems) for k, v in node.items()
        }
    model = _model(annotation, node)
    if model is None:
        return node
    fields = _fields(model)
    out = {
        k: _walk(v, fields.get(k), (*loc, k), lines, filename, base_dir, problems) for k, v in node.items()
    }
    secrets = secret_fields(model)
    for key in list(out):
        if not isinstance(key, str) or not key.endswith(_SUFFIXES) or key in fields:
            continue
        suffix = "_file" if key.endswith("_file") else "_env"
        field = key.removesuffix(suffix)
        if field not in secrets:
            continue  # an unknown key: validation names it
        where = (*loc, key)
        line = lines.get(where)
        value = out.pop(key)
        if secrets[field]:
            if not isinstance(value, dict):
                what = "files" if suffix == "_file" else "variables"
                problems.append(
                    ConfigProblem(filename, line, _dotted(where), f"a mapping of names to {what}")
                )
                continue
            merged = dict(out.get(field) or {})
            for name, ref in value.items():
                at = lines.get((*where, name), line)
                if name in merged:
                    message = f"'{name}' is given twice: in {field} and in {key}"
                    problems.append(ConfigProblem(filename, at, _dotted((*where, name)), message))
                    continue
                read = _read(ref, suffix, base_dir)
                if read.startswith("\0"):
                    problems.append(ConfigProblem(filename, at, _dotted((*where, name)), read[1:]))
                    continue
                merged[name] = read
                if at is not None:
                    lines[(*loc, field, name)] = at
            out[field] = merged
            if line is not None:
                lines.setdefault((*loc, field), line)
            continue
        if field in out:
            problems.append(ConfigProblem(filename, line, _dotted(where), f"give {field} or {key}, not both"))
            continue
        read = _read(value, suffix, base_dir)
        if read.startswith("\0"):
            problems.append(ConfigProblem(filename, line, _dotted(where), read[1:]))
            continue
        out[field] = read
        if line is not None:
            lines[(*loc, field)] = line
    return out


def _read(ref: object, suffix: str, base_dir: Path) -> str:
    """The secret, or its problem prefixed by a NUL (a secret never contains one)."""
    if not isinstance(ref, str) or not ref.strip():
        return "\0" + ("a file's path" if suffix == "_file" else "an environment variable's name")
    if suffix == "_env":
        value = os.environ.get(ref, "")
        return value if value else f"\0the environment variable {ref} is not set or empty"
    path = Path(ref)
    if not path.is_absolute():
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"\0cannot read {path}: {exc.strerror or exc}"
    except UnicodeError:
        return f"\0{path} is not UTF-8 text"
    text = text.rstrip("\r\n")
    if not text.strip():
        return f"\0{path} is empty"
    if "\0" in text:
        return f"\0{path} holds a NUL character"
    return text


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
