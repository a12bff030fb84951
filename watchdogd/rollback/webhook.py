"""The webhook step: one HTTP call to a deployer's API or any receiver, as a rollback step.

GitHub's repository dispatch, an Argo CD sync, a Jenkins job: the method,
headers (secrets read when the config is loaded, so a SIGHUP picks up a
rotated token) and a body templated in Jinja2's sandbox from the rollback's
variables. Done when the receiver answers an expected status (default: any
2xx). A repeated call after a crash carries the same ``Idempotency-Key``
(``service:deployment``), so a receiver that keeps them can tell.

Redirects are never followed (watchdogd/httppost.py says why).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import aiohttp

from watchdogd.config.webhook import WebhookStepConfig, form_fields
from watchdogd.httppost import post_json
from watchdogd.rollback.base import RollbackTarget, StepResult

FORM = "application/x-www-form-urlencoded"


class WebhookStep:
    """Calls the configured URL with the rollback; bounded retries on 5xx, 429 and network errors."""

    name = "webhook"

    def __init__(self, config: WebhookStepConfig, backoff: float = 1.0) -> None:
        self.config = config
        self.backoff = backoff

    @staticmethod
    def payload(target: RollbackTarget) -> dict[str, Any]:
        """The default body: the rollback as JSON."""
        return {
            "event": "rollback",
            "service": target.service,
            "deployment_id": target.deployment_id,
            "rollback_id": target.rollback_id,
            "idempotency_key": f"{target.service}:{target.deployment_id}",
            "image": image(target),
            "previous_image": previous_image(target),
            "reason": target.reason,
            "rules": list(target.fired_rules),
        }

    def variables(self, target: RollbackTarget) -> dict[str, Any]:
        """What a template sees; the names of ``watchdogd.config.webhook.SAMPLE``."""
        return {
            **self.payload(target),
            "container": target.current.name if target.current else None,
            "reasons": [
                {
                    "text": r.text,
                    "rule": r.rule,
                    "operator": r.operator,
                    "value": r.value,
                    "threshold": r.threshold,
                    "severity": r.severity,
                }
                for r in target.reasons
            ],
            "migrations": [m.id for m in target.migrations],
            "approved_by": target.approved_by,
            "payload": self.payload(target),
        }

    def request(self, target: RollbackTarget) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the call; ``ValueError`` when the template fails."""
        headers = {k: v.get_secret_value() for k, v in self.config.headers.items()}
        headers["Idempotency-Key"] = f"{target.service}:{target.deployment_id}"
        if self.config.template is None:
            return json.dumps(self.payload(target)).encode(), headers
        from watchdogd.notifiers.template import render_json

        body = render_json(self.config.template, self.variables(target))
        if self.config.body == "form":
            headers["Content-Type"] = FORM
            return urlencode(form_fields(body)).encode(), headers
        return body, headers

    async def run(self, target: RollbackTarget) -> StepResult:
        try:
            body, headers = self.request(target)
        except ValueError as exc:
            return StepResult("failed", f"webhook {self.config.url}: {exc}")
        async with aiohttp.ClientSession() as session:
            result = await post_json(
                session,
                self.config.url,
                body,
                attempt_timeout=self.config.timeout,
                attempts=self.config.retries + 1,
                backoff=self.backoff,
                headers=headers,
                method=self.config.method,
                expect=self.config.expect,
            )
        where = f"{self.config.method} {self.config.url}"
        if result.ok:
            return StepResult("done", f"{where} {result.reason}", {"attempts": result.attempts})
        return StepResult("failed", f"webhook {where}: {result.reason} (after {result.attempts} attempt(s))")

    async def describe(self, target: RollbackTarget) -> list[str]:
        try:
            body, headers = self.request(target)
        except ValueError as exc:
            return [f"{self.config.method} {self.config.url}: would fail: {exc}"]
        names = ", ".join(sorted(headers))
        return [f"{self.config.method} {self.config.url} (headers: {names}) {body.decode()}"]


def image(target: RollbackTarget) -> str | None:
    """The deployment's image: as registered, else the bad container's."""
    return target.image or (target.current.image if target.current else None)


def previous_image(target: RollbackTarget) -> str | None:
    return target.previous_image or (target.previous.image if target.previous else None)
