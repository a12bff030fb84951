"""The committed JSON Schema matches the models, and the examples fit it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdogd.cli import main
from watchdogd.config.schema import render

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
    rule_schema = _resolve(schema, service_schema["properties"]["rules"]["items"])
    for name, service in data["services"].items():
        assert re.fullmatch(name_pattern, name), name
        assert set(service) <= set(service_schema["properties"])
        for rule in service.get("rules", []):
            assert set(rule) <= set(rule_schema["properties"]), rule["name"]
            assert set(rule_schema["required"]) <= set(rule), rule["name"]


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
