"""The committed JSON Schema matches the models, and the examples fit it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import jsonschema
import pytest
import yaml
from jsonschema_specifications import REGISTRY

from watchdogd.cli import main
from watchdogd.config import load_config_text
from watchdogd.config.schema import render
from watchdogd.errors import ConfigError

ROOT = Path(__file__).parents[2]
SCHEMA_FILE = ROOT / "config" / "watchdogd.schema.json"
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))


def test_committed_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), (
        "config/watchdogd.schema.json is stale: run `watchdogd schema > config/watchdogd.schema.json`"
    )


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "server",
        "state",
        "defaults",
        "logging",
        "notify",
        "sources",
        "services",
        "templates",
        "backups",
        "groups",
    }


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    return schema["$defs"][ref.removeprefix("#/$defs/")]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_fits_the_schema_shape(path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(data) <= set(schema["properties"])
    assert set(schema.get("required", [])) <= set(data)
    services = _resolve(schema, schema["properties"]["services"])
    ((name_pattern, service_ref),) = services["patternProperties"].items()
    service_schema = _resolve(schema, service_ref)
    written, used = service_schema["properties"]["rules"]["items"]["anyOf"]
    for name, service in data["services"].items():
        assert re.fullmatch(name_pattern, name), name
        assert set(service) <= set(service_schema["properties"])
        for rule in service.get("rules", []):
            rule_schema = _resolve(schema, used if "use" in rule else written)
            if "use" in rule:
                assert set(rule_schema["required"]) <= set(rule), rule["name"]
                continue
            assert set(rule) <= set(rule_schema["properties"]), rule["name"]
            assert set(rule_schema["required"]) <= set(rule), rule["name"]


def _validator() -> jsonschema.protocols.Validator:
    """A validator of the draft the committed schema names, after checking the schema against it."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=None)
    assert cls is not None, f"no validator for $schema {schema.get('$schema')!r}"
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_schema_names_draft_2020_12_and_is_a_valid_schema_of_it() -> None:
    assert type(_validator()) is jsonschema.Draft202012Validator


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_against_the_schema(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in _validator().iter_errors(data)
    ]
    assert errors == []


def _keywords(meta: dict[str, Any]) -> set[str]:
    """Every keyword a draft defines: its meta-schema's properties and those of its vocabularies."""
    found = set(meta.get("properties", {}))
    for part in meta.get("allOf", ()):
        uri = urljoin(meta["$id"], part["$ref"])
        found |= _keywords({"$id": uri, **REGISTRY.contents(uri)})
    return found


SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
NAMED_SUBSCHEMAS = ("properties", "patternProperties", "$defs", "dependentSchemas")


def _schema_objects(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object under ``node`` with its JSON pointer; values of const, enum, default skipped."""
    if not isinstance(node, dict):
        return
    yield where, node
    for key in SUBSCHEMA:
        yield from _schema_objects(node.get(key), f"{where}/{key}")
    for key in SUBSCHEMA_LISTS:
        for index, sub in enumerate(node.get(key, ())):
            yield from _schema_objects(sub, f"{where}/{key}/{index}")
    for key in NAMED_SUBSCHEMAS:
        for name, sub in node.get(key, {}).items():
            yield from _schema_objects(sub, f"{where}/{key}/{name}")


def test_schema_uses_only_keywords_of_its_draft() -> None:
    validator = _validator()
    keywords = _keywords(type(validator).META_SCHEMA)
    assert {"$ref", "anyOf", "patternProperties", "unevaluatedProperties", "contentSchema"} <= keywords
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    objects = list(_schema_objects(schema))
    assert len(objects) > 200
    unknown = [f"{where}: {key}" for where, node in objects for key in node if key not in keywords]
    assert unknown == []


@pytest.mark.parametrize("interval", ["0", "0s", "0m0s", "0.0h"])
def test_a_zero_interval_is_refused_by_the_schema_as_by_the_loader(interval: str) -> None:
    text = f"""
sources:
  app: {{type: http, url: "http://127.0.0.1:1/health", interval: "{interval}"}}
services: {{}}
"""
    with pytest.raises(ConfigError):
        load_config_text(text, "zero.yaml")
    assert list(_validator().iter_errors(yaml.safe_load(text))) != []


def test_a_positive_interval_and_a_zero_grace_fit_the_schema() -> None:
    text = """
defaults: {grace: 0s}
sources:
  app: {type: http, url: "http://127.0.0.1:1/health", interval: 500ms}
services: {}
"""
    load_config_text(text, "fine.yaml")
    assert list(_validator().iter_errors(yaml.safe_load(text))) == []


def test_config_reference_is_current() -> None:
    from watchdogd.config.reference import render_markdown

    committed = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert committed == render_markdown(), (
        "docs/config.md is stale: run `watchdogd schema --markdown > docs/config.md`"
    )


def test_config_reference_names_every_key_of_every_model() -> None:
    from watchdogd.config.models import Config
    from watchdogd.config.reference import render_markdown

    text = render_markdown()
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert f"| `{field.alias or name}` |" in text, f"{model.__name__}.{name} missing"
            for arg in _models_in(field.annotation):
                walk(arg)

    walk(Config)
    assert len(seen) > 20


def _models_in(annotation: object) -> list[type]:
    from typing import get_args

    from pydantic import BaseModel

    found: list[type] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            found.append(item)
        stack.extend(get_args(item))
    return found
