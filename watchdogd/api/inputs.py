"""What a request brings in: the body models and their validation, the ``Idempotency-Key``
header and whole numbers from the query. Every refusal is a 400 or a 422."""

from __future__ import annotations

import re
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from watchdogd.config.types import DURATION_PATTERN, parse_duration
from watchdogd.errors import RequestError
from watchdogd.sources.alertmanager import WebhookPayload

MAX_BODY = 1 << 20
MAX_DURATION = 366 * 86400.0
"""The longest window or mute a request may ask for: beyond it times stop being printable."""


class Body(BaseModel):
    # strict: a number is not a string, "true" is not a boolean
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _duration(value: str | None, positive: bool = False) -> str | None:
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds > MAX_DURATION:
        raise ValueError(f"'{value}' is longer than 366d")
    if positive and seconds <= 0:
        raise ValueError("must be longer than 0")
    return value


class EmptyBody(Body):
    """No fields: votes without a body may also send ``{}``."""


class MigrationBody(Body):
    id: str = Field(
        min_length=1,
        max_length=200,
        description="The migration's id: its down SQL and verify queries are read from the service's "
        "database.migrations directory.",
    )
    down_sql: str | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description="Only when the service sets database.sql_from_api: schema changes in its own schemas.",
    )
    verify_sql: list[Annotated[str, Field(min_length=1, max_length=100_000)]] | None = Field(
        None, max_length=100, description="Only with database.sql_from_api: SELECTs reading the catalog."
    )


class DeploymentBody(Body):
    service: str = Field(min_length=1, max_length=100)
    image: str | None = Field(None, min_length=1, max_length=500)
    previous_image: str | None = Field(None, min_length=1, max_length=500)
    migrations: list[MigrationBody] = Field(default_factory=list, max_length=100)
    window: str | None = Field(None, pattern=DURATION_PATTERN, description="5m, 2h, 1d; at most 366d")
    rehearse: bool = False
    backup_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The backup taken before migrating (POST /v1/services/{service}/backups): what a "
        "restore step restores.",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        return _duration(value, positive=True)

    @model_validator(mode="after")
    def _unique(self) -> DeploymentBody:
        ids = [m.id for m in self.migrations]
        if len(set(ids)) != len(ids):
            raise ValueError("two migrations have the same id")
        return self


class ReasonBody(Body):
    reason: str = Field(min_length=1, max_length=2000)


class VetoBody(ReasonBody):
    mute_for: str | None = Field(None, pattern=DURATION_PATTERN, description="30m, 2h; at most 366d")

    @field_validator("mute_for")
    @classmethod
    def _mute(cls, value: str | None) -> str | None:
        return _duration(value)


class FreezeBody(ReasonBody):
    for_: str = Field(alias="for", pattern=DURATION_PATTERN, description="2h, 1d; at most 366d")

    @field_validator("for_")
    @classmethod
    def _for(cls, value: str) -> str:
        return _duration(value, positive=True) or value


BODIES: dict[str, type[BaseModel]] = {
    m.__name__: m
    for m in (EmptyBody, MigrationBody, DeploymentBody, ReasonBody, VetoBody, FreezeBody, WebhookPayload)
}


async def read_body(request: web.Request, model: type[BaseModel], optional: bool = False) -> Any:
    """The body validated by ``model``: 400 when it is not JSON, 422 when it breaks the model.

    The model's own JSON parser rejects what ``json`` would let through and
    the store could not keep: lone surrogates, NaN, nesting past its limit.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(
            status=400, code="too_large", message=f"request body over {MAX_BODY} bytes"
        ) from None
    if optional and not raw.strip():
        return model()
    if request.content_type != "application/json":
        raise RequestError(
            status=400, code="bad_request", message="send JSON (Content-Type: application/json)"
        )
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise RequestError(
                status=400, code="bad_request", message=f"the body is not valid JSON: {first['msg']}"
            ) from None
        if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
            raise RequestError(status=422, code="invalid", message="the body must be a JSON object") from None
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        raise RequestError(status=422, code="invalid", message=f"{where}: {message}") from None


IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


def idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: up to 200 visible ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise RequestError(
            status=400, code="bad_request", message="Idempotency-Key: use 1 to 200 visible ASCII characters"
        )
    return key


def count(query: Any, name: str, low: int, high: int) -> int | None:
    """The whole number ``name`` of the query, ``low`` to ``high``; None when not given."""
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise RequestError(status=400, code="bad_request", message=f"{name}: a whole number {low} to {high}")
    return int(raw)
