"""The JSON Schema of the config, generated from the models.

``config/watchdogd.schema.json`` is this document; a test fails when the file
and the models disagree, and ``watchdogd schema > config/watchdogd.schema.json``
rewrites it.
"""

from __future__ import annotations

import json
from typing import Any

from watchdogd.config.models import Config

SCHEMA_ID = "https://watchdogd.dev/schema/config.json"


def config_json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "watchdogd config"
    return schema


def render() -> str:
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"
