"""The JSON Schema of the config, generated from the models.

``config/watchdogd.schema.json`` is this document; a test fails when the file
and the models disagree, and ``watchdogd schema > config/watchdogd.schema.json``
rewrites it.

Pydantic writes two things no JSON Schema validator knows: the numeric
constraints of a field whose schema is given by hand (``gt``, ``ge`` on a
duration, which is a string in the file) and the OpenAPI ``discriminator`` of
the sources' union. Editors would ignore both silently, so they are rewritten
in standard keywords here, and anything else of the kind is refused.
"""

from __future__ import annotations

import json
from typing import Any

from watchdogd.config.models import Config
from watchdogd.config.types import DURATION_PATTERN

SCHEMA_ID = "https://watchdogd.dev/schema/config.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

ZERO_DURATION_PATTERN = r"^((0+(\.0+)?)(ms|s|m|h|d))+$|^0$"
"""Every way of writing a duration that is zero: ``0``, ``0s``, ``0m0s``, ``0.0h``."""

_DURATION_STRING = {"type": "string", "pattern": DURATION_PATTERN}
_NUMERIC_BOUNDS = ("gt", "ge", "lt", "le")
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")


def config_json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True, mode="validation")
    _standardise(schema)
    _templates(schema)
    _secret_sources(schema)
    schema["$schema"] = DIALECT
    schema["$id"] = SCHEMA_ID
    schema["title"] = "watchdogd config"
    return schema


def render() -> str:
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"


def _standardise(node: Any) -> None:
    """Rewrite pydantic's non-standard keys in ``node`` and every schema under it, in place."""
    if not isinstance(node, dict):
        return
    # the `type` const of each source already picks one branch of the oneOf
    node.pop("discriminator", None)
    if any(key in node for key in _NUMERIC_BOUNDS):
        _bound_duration(node)
    for key in _SUBSCHEMA:
        _standardise(node.get(key))
    for key in _SUBSCHEMA_LISTS:
        for sub in node.get(key, ()):
            _standardise(sub)
    for key in _SUBSCHEMA_MAPS:
        for sub in node.get(key, {}).values():
            _standardise(sub)


def _bound_duration(node: dict[str, Any]) -> None:
    """A duration's ``ge=0`` (always true) or ``gt=0`` (not zero) in standard keywords."""
    bounds = {key: node.pop(key) for key in _NUMERIC_BOUNDS if key in node}
    if _DURATION_STRING not in node.get("anyOf", ()):
        raise ValueError(f"numeric bounds {bounds} on a schema that is not a duration: {node}")
    if set(bounds) - {"gt", "ge"} or any(value != 0 for value in bounds.values()):
        raise ValueError(f"a duration bound JSON Schema cannot say: {bounds}")
    if "gt" in bounds:
        # zero, written any way, is refused; what is left is the string form
        node.pop("anyOf")
        node.update(_DURATION_STRING)
        node["not"] = {"pattern": ZERO_DURATION_PATTERN}
        node["description"] = "A duration longer than 0: 500ms, 15s, 5m, 2h, 1h30m."


_SCALAR = {"type": ["string", "number", "boolean"]}


def _templates(schema: dict[str, Any]) -> None:
    """``templates:`` and a rule that ``use``s one: expanded before validation, so not in the models."""
    defs = schema["$defs"]
    defs["RuleTemplate"] = {
        "type": "object",
        "title": "RuleTemplate",
        "description": "A rule body with ${args.NAME} placeholders; rules use it with use: and args:.",
        "properties": {
            "description": {"type": "string"},
            "args": {
                "anyOf": [
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "null"}]}},
                ],
                "description": "Argument names; as a mapping, each with its default (null: required).",
            },
            "rule": {"type": "object", "description": "A rule without its name."},
        },
        "required": ["rule"],
        "additionalProperties": False,
    }
    defs["RuleUse"] = {
        "type": "object",
        "title": "RuleUse",
        "description": "A rule made from a template; keys written here replace the template's.",
        "properties": {
            "name": {"type": "string"},
            "use": {"type": "string", "description": "The template's name."},
            "args": {"type": "object", "additionalProperties": _SCALAR},
        },
        "required": ["name", "use"],
    }
    rules = defs["ServiceConfig"]["properties"]["rules"]
    rules["items"] = {"anyOf": [rules["items"], {"$ref": "#/$defs/RuleUse"}]}
    schema["properties"]["templates"] = {
        "type": "object",
        "title": "Templates",
        "additionalProperties": {"$ref": "#/$defs/RuleTemplate"},
    }


def _secret_sources(schema: dict[str, Any]) -> None:
    """``X_file`` and ``X_env`` beside every secret field ``X``: resolved before validation."""
    from pydantic import BaseModel

    from watchdogd.config import detection, models, notify, sources, steps, webhook
    from watchdogd.config.secrets import secret_fields

    modules = (models, sources, steps, notify, detection, webhook)
    for name, node in schema["$defs"].items():
        model = next((getattr(m, name) for m in modules if hasattr(m, name)), None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        properties = node.get("properties", {})
        for field, mapping in secret_fields(model).items():
            for suffix, what in (("_file", "a file holding"), ("_env", "an environment variable holding")):
                key = field + suffix
                if key in properties:
                    continue
                text = f"Instead of {field}: {what} it, read at load and on every reload."
                if mapping:
                    properties[key] = {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": text,
                    }
                else:
                    properties[key] = {"type": "string", "description": text}
            required = node.get("required", [])
            if field in required:
                # written inline, or from a file, or from the environment
                required.remove(field)
                node.setdefault("allOf", []).append(
                    {"anyOf": [{"required": [field + suffix]} for suffix in ("", "_file", "_env")]}
                )
        if "required" in node and not node["required"]:
            del node["required"]
