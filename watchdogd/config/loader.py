"""Reading a config file: YAML with line numbers, validation, readable errors.

Every problem becomes one line, ``file:line: field.path: message``; all the
problems of a file are reported together, and none carries a secret.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from watchdogd.config.checks import Loc, check_config
from watchdogd.config.models import Config, ExecSource, FileSource, Model, StateConfig
from watchdogd.config.secrets import resolve as resolve_secrets
from watchdogd.config.templates import expand as expand_templates
from watchdogd.config.types import SecretUrl, redact_url
from watchdogd.errors import ConfigError, ConfigProblem

# Where each key and list item of the file starts (1-based), by its path.
LineMap = dict[Loc, int]

_SECRET_HINTS = ("dsn", "url", "password", "token", "headers", "secret")
# A value of the wrong shape where a mapping or a list belongs is never quoted: it may be
# a whole DSN or credentials pair written in the wrong place (``database: postgresql://...``).
_CONTAINER_TYPES = ("model_type", "model_attributes_type", "dict_type", "tuple_type", "list_type")


def load_config(path: str | Path) -> Config:
    """Load and check a config file; raises ConfigError naming every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read: {reason}")]) from None
    return load_config_text(text, str(path), base_dir=file.resolve().parent)


def load_config_text(text: str, filename: str, base_dir: Path | None = None) -> Config:
    """Load a config from text; relative paths are taken from ``base_dir``."""
    data, lines = parse_yaml(text, filename)
    if data is None:
        # An empty file is far more often the wrong path than a wish to watch nothing.
        raise ConfigError([ConfigProblem(filename, 1, "", "the config is empty")])
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(filename, 1, "", "the config must be a mapping of keys")])
    data, expansion = expand_templates(data, lines, filename)
    if expansion.problems:
        raise ConfigError(_in_file_order(expansion.problems))
    data, secret_problems = resolve_secrets(data, lines, filename, base_dir or Path.cwd())
    if secret_problems:
        raise ConfigError(_in_file_order(secret_problems))
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        found = pydantic_problems(exc, data, lines, filename)
        raise ConfigError(_in_file_order([expansion.note(p) for p in found])) from None
    problems = check_config(config)
    if problems:
        raise ConfigError(
            _in_file_order(
                [
                    expansion.note(ConfigProblem(filename, _line(loc, data, lines), _field(loc, data), msg))
                    for loc, msg in problems
                ]
            )
        )
    return _resolve_paths(config, base_dir or Path.cwd())


def _in_file_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """Top to bottom, as the user reads the file; problems without a line first."""
    return sorted(problems, key=lambda p: p.line or 0)


_FAST: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)
"""libyaml's parser where PyYAML was built with it: a fleet's config of 10,000 rules in a second,
not twenty. A file it refuses is read again by PyYAML's own parser, whose messages say what it
found where (``expected ',' or '}', but got ':'``)."""


def parse_yaml(text: str, filename: str) -> tuple[Any, LineMap]:
    """Plain data from YAML text, and the line each key and item is on.

    Duplicate keys are errors: YAML's "the last one wins" hides typos.
    """
    if _FAST is not None:
        try:
            return _parse_yaml(text, filename, _FAST)
        except ConfigError:
            pass
    return _parse_yaml(text, filename, yaml.SafeLoader)


def _parse_yaml(text: str, filename: str, kind: type[yaml.SafeLoader]) -> tuple[Any, LineMap]:
    try:
        loader = kind(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow, found as the reader starts
        raise ConfigError([ConfigProblem(filename, None, "", f"invalid YAML: {exc}")]) from None
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(filename, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(filename, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if node is None:
        return None, {}
    lines: LineMap = {(): node.start_mark.line + 1}
    problems: list[ConfigProblem] = []
    try:
        data = _build(loader, node, (), lines, problems, filename)
    except yaml.MarkedYAMLError as exc:  # a scalar no constructor takes (``=``, ``!!python/...``)
        raise ConfigError([_yaml_problem(filename, exc)]) from None
    if problems:
        raise ConfigError(problems)
    return data, lines


def _yaml_problem(filename: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    reason = exc.problem or exc.context or "invalid YAML"
    return ConfigProblem(filename, line, "", f"invalid YAML: {reason}")


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    lines: LineMap,
    problems: list[ConfigProblem],
    filename: str,
) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                problems.append(
                    ConfigProblem(
                        filename,
                        key_node.start_mark.line + 1,
                        _dotted(path),
                        "keys must be plain words",
                    )
                )
                continue
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in result:
                problems.append(
                    ConfigProblem(filename, key_node.start_mark.line + 1, _dotted(child), "duplicate key")
                )
                continue
            lines[child] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, child, lines, problems, filename)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            items.append(_build(loader, item, child, lines, problems, filename))
        return items
    return loader.construct_object(node, deep=True)


def _present_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """The part of a validation location that exists in the file.

    Pydantic adds steps that are not keys (a union's tag, ``function-after``);
    walking the data leaves them out.
    """
    out: list[str | int] = []
    current = data
    for part in loc:
        if (isinstance(current, dict) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        ):
            current = current[part]
            out.append(part)
        elif (current is None or isinstance(current, dict | list)) and _is_field_name(part):
            # a key that is missing from the file (or under one that is): still name it
            out.append(part)
            current = None
    return tuple(out)


def _is_field_name(part: str | int) -> bool:
    return isinstance(part, str) and part in _all_field_names()


_FIELD_NAMES: set[str] = set()


def _all_field_names() -> set[str]:
    if not _FIELD_NAMES:
        stack: list[type[BaseModel]] = [Config]
        seen: set[type[BaseModel]] = set()
        while stack:
            model = stack.pop()
            if model in seen:
                continue
            seen.add(model)
            for name, info in model.model_fields.items():
                _FIELD_NAMES.add(info.alias or name)
            for sub in Model.__subclasses__():
                stack.append(sub)
                stack.extend(sub.__subclasses__())
    return _FIELD_NAMES


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel] = Config) -> set[str] | None:
    """The keys the model at a validation location accepts, or None when it is no model."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            info = fields.get(part) if isinstance(part, str) else None
            if info is None:
                info = next((f for f in fields.values() if f.alias == part), None)
            if info is None:
                return None
            current = info.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) in (tuple, list):
            current = get_args(current)[0]
        elif get_origin(current) in (Union, UnionType):
            # a tagged union: the location names the member by its tag
            current = next((m for m in get_args(current) if _tag(m) == part), None)
            if current is None:
                return None
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return {info.alias or name for name, info in current.model_fields.items()}
    return None


def _unwrap(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and from ``X | None``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if get_origin(annotation) in (Union, UnionType):
            members = [m for m in get_args(annotation) if m is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _tag(member: Any) -> Any:
    member = _unwrap(member)
    if isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
        args = get_args(member.model_fields["type"].annotation)
        return args[0] if args else None
    return None


def _line(loc: Loc, data: Any, lines: LineMap) -> int | None:
    present = _present_loc(loc, data)
    for size in range(len(present), -1, -1):
        line = lines.get(present[:size])
        if line is not None:
            return line
    return None


def _field(loc: Loc, data: Any) -> str:
    return _dotted(_present_loc(loc, data))


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_problems(
    exc: ValidationError, data: Any, lines: LineMap, filename: str, root: type[BaseModel] = Config
) -> list[ConfigProblem]:
    """One line-numbered problem per validation error of ``root`` on ``data``."""
    problems: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
        field = _field(loc, data)
        message = _message(error, loc, root)
        if (field, message) in seen:
            continue
        seen.add((field, message))
        problems.append(ConfigProblem(filename, _line(loc, data, lines), field, message))
    return problems


def _message(error: Any, loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    kind = error["type"]
    text = str(error["msg"])
    secret = any(hint in str(part).lower() for part in loc for hint in _SECRET_HINTS)
    value = error.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        name = str(loc[-1])
        allowed = _fields_at(loc[:-1], root) or _all_field_names()
        close = difflib.get_close_matches(name, sorted(allowed), n=1)
        return f"unknown key '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"unknown type '{_safe(ctx.get('tag'))}' (one of: {ctx.get('expected_tags', '')})"
    if kind == "union_tag_not_found":
        return "missing 'type'"
    if kind in ("value_error", "assertion_error"):
        return text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "string_pattern_mismatch" and isinstance(value, str):
        return (
            f"invalid name '{value}': use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
    if kind == "too_short":
        least = error.get("ctx", {}).get("min_length", 1)
        return f"needs at least {least} item" + ("" if least == 1 else "s")
    if kind in ("model_type", "model_attributes_type"):
        return f"must be a mapping of keys, not {type(value).__name__}"
    text = text.replace("Input should be", "must be")
    if kind == "literal_error" and not secret and isinstance(value, str | int | float | bool):
        return f"{text}, not {_safe(value)!r}"
    if kind.endswith("_type") and not secret and isinstance(value, str | int | float | bool | list | dict):
        if kind in _CONTAINER_TYPES or isinstance(value, list | dict):
            return f"{text}, not {type(value).__name__}"
        return f"{text}, not {type(value).__name__} {_short(_safe(value))}"
    return text


def _safe(value: Any) -> Any:
    """A quoted value with any URL password masked."""
    return redact_url(value) if isinstance(value, str) and "@" in value else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _resolve_exec(source: ExecSource, resolve: Callable[[Path], Path]) -> ExecSource:
    """An exec source runs in the config's folder unless told; its report is relative to its cwd."""
    cwd = resolve(source.cwd) if source.cwd is not None else resolve(Path("."))
    env_file = resolve(source.env_file) if source.env_file is not None else None
    return source.model_copy(update={"cwd": cwd, "env_file": env_file})


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the config are relative to the config file's folder."""

    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    sources = {
        name: source.model_copy(update={"path": resolve(source.path)})
        if isinstance(source, FileSource)
        else _resolve_exec(source, resolve)
        if isinstance(source, ExecSource)
        else source
        for name, source in config.sources.items()
    }
    server = config.server
    updates: dict[str, Any] = {}
    if server.tokens_file is not None:
        updates["tokens_file"] = resolve(server.tokens_file)
    if server.tls is not None:
        updates["tls"] = server.tls.model_copy(
            update={"cert": resolve(server.tls.cert), "key": resolve(server.tls.key)}
        )
    state = config.state
    url = state.url.secret()
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        state = StateConfig(url=SecretUrl("sqlite:///" + str(resolve(Path(url[len("sqlite:///") :])))))
    services = {}
    for name, svc in config.services.items():
        database = svc.database
        if database is not None and database.migrations is not None:
            migrations = database.migrations.model_copy(update={"dir": resolve(database.migrations.dir)})
            svc = svc.model_copy(update={"database": database.model_copy(update={"migrations": migrations})})
        services[name] = svc
    return config.model_copy(
        update={
            "sources": sources,
            "server": server.model_copy(update=updates),
            "state": state,
            "services": services,
        }
    )


def locate(path: str | Path, loc: Loc) -> ConfigProblem:
    """Where ``loc`` stands in the file at ``path``: its line (when the file still reads) and field."""
    name = str(path)
    try:
        data, lines = parse_yaml(Path(path).read_text(encoding="utf-8"), name)
    except (OSError, ConfigError):
        return ConfigProblem(name, None, _dotted(loc), "")
    return ConfigProblem(name, _line(loc, data, lines), _field(loc, data), "")
