"""``rollback.webhook``: the step that calls a deployer's API (GitHub, Argo CD, Jenkins) or any receiver.

Its URL and header values are secrets: each also takes ``url_file``/``url_env``
and ``headers_file``/``headers_env`` (watchdogd/config/secrets.py). The body is
the default JSON payload, or what a sandboxed Jinja2 template renders from the
variables in ``SAMPLE`` (docs/rollback-steps.md lists them). A template is
rendered once with ``SAMPLE`` at load, so a misspelt variable is a config
problem on its line, not a failed rollback at 3 a.m.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from watchdogd.config.notify import HEADER_NAME
from watchdogd.config.types import Duration, SecretUrl

SAMPLE: dict[str, Any] = {
    "event": "rollback",
    "service": "api",
    "deployment_id": "d-1",
    "rollback_id": "rb-1",
    "idempotency_key": "api:d-1",
    "image": "registry.example.com/team/api:v2",
    "previous_image": "registry.example.com/team/api:v1",
    "container": "api",
    "reason": "error-rate: error rate 0.2 > 0.05 for 1m",
    "reasons": [
        {
            "text": "error rate 0.2 > 0.05 for 1m",
            "rule": "error-rate",
            "operator": None,
            "value": 0.2,
            "threshold": 0.05,
            "severity": "critical",
        }
    ],
    "rules": ["error-rate"],
    "migrations": ["0042_add_index"],
    "approved_by": None,
    "payload": {},
}
"""Every template variable with a value of its type; the step gives the same names (a test holds it)."""


class WebhookStepConfig(BaseModel):
    """An HTTP call made as a rollback step; done when the receiver answers an expected status."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    url: SecretUrl = Field(description="Where the request goes; a secret (also url_file, url_env).")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME)], SecretStr] = Field(
        default_factory=dict,
        description="Sent with the request (Authorization: Bearer ...); values are secrets, also from "
        "headers_file or headers_env: {Authorization: /run/secrets/deployer-token}.",
    )
    template: str | None = Field(
        None,
        max_length=100_000,
        description="A Jinja2 template (sandboxed) rendering the body as JSON from the rollback's variables "
        "(image, previous_image, service, deployment_id, rollback_id, reasons...); default: the "
        "rollback as JSON. See docs/rollback-steps.md.",
    )
    body: Literal["json", "form"] = Field(
        "json",
        description="form: the template's JSON object of flat values is sent as "
        "application/x-www-form-urlencoded (Jenkins buildWithParameters).",
    )
    expect: tuple[Annotated[int, Field(ge=200, le=499)], ...] = Field(
        (),
        description="The statuses that mean done ([204] for GitHub's dispatch, [201] for Jenkins); default: "
        "any 2xx. Any other answer fails the step; only 5xx, 429 and network errors are retried.",
    )
    timeout: Duration = Field(10.0, gt=0, description="Per attempt.")
    retries: int = Field(3, ge=0, le=10)

    @field_validator("expect")
    @classmethod
    def _no_redirect(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        wrong = [s for s in value if 300 <= s < 400]
        if wrong:
            raise ValueError(f"a redirect ({wrong[0]}) is never followed and cannot be expected")
        return tuple(dict.fromkeys(value))

    @field_validator("template")
    @classmethod
    def _renders(cls, value: str | None) -> str | None:
        if value is not None:
            from watchdogd.notifiers.template import render_json

            render_json(value, SAMPLE)
        return value

    @model_validator(mode="after")
    def _form(self) -> WebhookStepConfig:
        if self.body == "form":
            if self.template is None:
                raise ValueError("a form body needs a template rendering a JSON object of its fields")
            from watchdogd.notifiers.template import render_json

            form_fields(render_json(self.template, SAMPLE))
        return self


def form_fields(body: bytes) -> dict[str, str]:
    """A rendered template as form fields: a JSON object of strings, numbers, booleans (null: left out)."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("a form body's template must render a JSON object")
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            raise ValueError(
                f"a form body's field {key!r} must be a string, number or boolean, "
                f"not a {type(value).__name__}"
            )
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
