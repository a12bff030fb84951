"""The notification targets of ``notify:``: a generic webhook, Slack, Microsoft Teams, PagerDuty, Opsgenie.

Every secret (a webhook URL that is its own credential, a routing key, an API
key) is given one of three ways: inline (``url``), from a file (``url_file``:
an absolute path, e.g. a mounted Kubernetes Secret) or from the environment
(``url_env``: a variable's name). The file or variable is read when the config
is loaded and again on each reload, so a rotated secret needs only a SIGHUP;
the chart never writes one into its ConfigMap.

A ``template`` replaces the body with what a sandboxed Jinja2 template renders
(it must render JSON); Jinja2 is imported only when a template is configured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from watchdogd.config.types import Duration, SecretUrl

Family = Literal["proposal", "rollback", "veto", "promotion", "notify"]
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def read_secret(inline: str | None, file: Path | None, env: str | None, what: str) -> str:
    """The secret given inline, in ``file`` (trailing newline dropped) or in the variable ``env``."""
    if inline is not None:
        return inline
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"{what}_file: cannot read {file}: {exc.strerror or exc}") from None
        except UnicodeError:
            raise ValueError(f"{what}_file: {file} is not UTF-8 text") from None
        if not value:
            raise ValueError(f"{what}_file: {file} is empty")
        return value
    if env is not None:
        value = os.environ.get(env, "")
        if not value:
            raise ValueError(f"{what}_env: the environment variable {env} is not set or empty")
        return value
    raise ValueError(f"give {what}, {what}_file or {what}_env")


def _one_of(values: dict[str, Any], name: str, required: bool) -> None:
    given = [k for k in (name, f"{name}_file", f"{name}_env") if values.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f"give only one of {', '.join(given)}")
    if required and not given:
        raise ValueError(f"give {name}, {name}_file or {name}_env")
    path = values.get(f"{name}_file")
    if path is not None and not Path(path).is_absolute():
        raise ValueError(f"{name}_file: write an absolute path, not {path}")


class TargetBase(_Model):
    timeout: Duration = Field(5.0, gt=0)
    events: tuple[Family, ...] | None = Field(None, description="Only these families; default: all.")
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME)], SecretStr] = Field(
        default_factory=dict, description="Sent with every request of this target."
    )
    headers_env: dict[Annotated[str, Field(pattern=HEADER_NAME)], str] = Field(
        default_factory=dict,
        description="Headers whose values come from environment variables: {Authorization: HOOK_AUTH}.",
    )
    template: str | None = Field(
        None,
        max_length=100_000,
        description="A Jinja2 template (sandboxed) that renders the JSON body; see docs/notifications.md.",
    )
    page_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="The operator page as people reach it (https://watchdogd.example/ui): links in messages.",
    )

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            from watchdogd.notifiers.template import compile_template

            compile_template(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, required in cls.SECRETS:
                _one_of(values, name, required)
        return values

    SECRETS: ClassVar[tuple[tuple[str, bool], ...]] = ()
    """Each secret field's name, and whether it must be given."""

    def secret(self, name: str) -> str:
        inline = getattr(self, name)
        if isinstance(inline, SecretUrl):
            inline = inline.secret()
        elif isinstance(inline, SecretStr):
            inline = inline.get_secret_value()
        return read_secret(inline, getattr(self, f"{name}_file"), getattr(self, f"{name}_env"), name)

    def header_values(self) -> dict[str, str]:
        out = {k: v.get_secret_value() for k, v in self.headers.items()}
        for key, variable in self.headers_env.items():
            out[key] = read_secret(None, None, variable, f"headers_env.{key}")
        return out

    def label(self) -> str:
        """What logs name this target by: its type and a masked URL, never a secret."""
        kind = str(getattr(self, "type", "webhook"))
        url = getattr(self, "url", None)
        if url is not None:
            return str(url) if kind == "webhook" else f"{kind} {url}"
        source = getattr(self, "url_file", None) or getattr(self, "url_env", None)
        return f"{kind} (url from {source})" if source else kind


class WebhookNotify(TargetBase):
    type: Literal["webhook"]
    url: SecretUrl | None = None
    url_file: Path | None = None
    url_env: str | None = None
    format: Literal["slack", "json"] = Field(
        "slack", description="slack: a Slack-compatible payload with a text field."
    )
    SECRETS = (("url", True),)


class SlackNotify(TargetBase):
    """Slack Block Kit to an incoming webhook, with buttons to the operator page when page_url is set."""

    type: Literal["slack"]
    url: SecretUrl | None = None
    url_file: Path | None = None
    url_env: str | None = None
    SECRETS = (("url", True),)


class TeamsNotify(TargetBase):
    """An Adaptive Card to a Microsoft Teams incoming webhook (or a Workflows webhook)."""

    type: Literal["teams"]
    url: SecretUrl | None = None
    url_file: Path | None = None
    url_env: str | None = None
    SECRETS = (("url", True),)


class PagerDutyNotify(TargetBase):
    """PagerDuty Events API v2: trigger on a proposal or a failed rollback, resolve when it ends."""

    type: Literal["pagerduty"]
    routing_key: SecretStr | None = None
    routing_key_file: Path | None = None
    routing_key_env: str | None = None
    url: SecretUrl = Field(
        SecretUrl("https://events.pagerduty.com/v2/enqueue"),
        description="The Events API v2 endpoint (events.eu.pagerduty.com for the EU service region).",
    )
    severity: Literal["critical", "error", "warning", "info"] = "critical"
    SECRETS = (("routing_key", True),)


class OpsgenieNotify(TargetBase):
    """Opsgenie Alert API: an alert per rollback (alias), closed when it ends."""

    type: Literal["opsgenie"]
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_key_env: str | None = None
    url: SecretUrl = Field(
        SecretUrl("https://api.opsgenie.com/v2/alerts"),
        description="The Alert API (api.eu.opsgenie.com for the EU instance).",
    )
    priority: Literal["P1", "P2", "P3", "P4", "P5"] = "P2"
    responders: tuple[dict[str, str], ...] = Field(
        (), description="Opsgenie responders: [{type: team, name: sre}]."
    )
    tags: tuple[str, ...] = ("watchdogd",)
    SECRETS = (("api_key", True),)


NotifyTarget = Annotated[
    WebhookNotify | SlackNotify | TeamsNotify | PagerDutyNotify | OpsgenieNotify, Field(discriminator="type")
]
