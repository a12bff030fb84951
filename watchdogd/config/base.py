"""What every config model stands on: the base model, names, step names, patterns."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
Mode = Literal["auto", "manual", "dry-run"]
Action = Literal["rollback", "notify"]
Severity = Literal["info", "warning", "critical"]
STEP_NAMES: tuple[str, ...] = ("container", "sql", "restore", "redis_purge", "webhook", "verify")
STEP_PATTERN = r"^(container|sql|restore|redis_purge|webhook|verify|command:[A-Za-z0-9][A-Za-z0-9_.-]*)$"


def _step_name(value: str) -> str:
    if not re.fullmatch(STEP_PATTERN, value):
        raise ValueError(
            "must be 'container', 'sql', 'restore', 'redis_purge', 'webhook', 'verify' or 'command:NAME', "
            f"not {value!r}"
        )
    return value


StepName = Annotated[
    str,
    AfterValidator(_step_name),
    Field(
        json_schema_extra={"pattern": STEP_PATTERN},
        description="container, sql, restore, redis_purge, webhook, verify, or command:NAME (of "
        "rollback.commands)",
    ),
]


class Model(BaseModel):
    """Every config model: frozen after load, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
