"""The rollback webhook step calling a deployer's API, against local receivers on 127.0.0.1.

Each receiver checks what the real API documents: GitHub's repository
dispatch (``POST /repos/OWNER/REPO/dispatches``, ``event_type`` and at most
ten top-level ``client_payload`` properties, answers 204), Argo CD's sync
(``POST /api/v1/applications/NAME/sync`` with an ApplicationSyncRequest,
answers 200) and Jenkins' ``buildWithParameters`` (a form, answers 201 with
the queue item in Location).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator

from tests.integration.test_rollback_plan import Server
from watchdogd.config.loader import load_config_text
from watchdogd.config.models import ServiceConfig, WebhookStepConfig
from watchdogd.errors import ConfigError
from watchdogd.model import Deployment, DeploymentFacts, DeploymentState, Reason
from watchdogd.rollback.steps import WebhookStep
from watchdogd.watch.execution import rollback_target

pytestmark = pytest.mark.integration

TOKEN = "ghp_s3cretT0ken000000000000000000000000"
NO_CONTAINER = ServiceConfig.model_validate(
    {"rollback": {"steps": ["webhook"], "webhook": {"url": "http://x"}}}
)

GITHUB_DISPATCH = {
    "type": "object",
    "required": ["event_type"],
    "additionalProperties": False,
    "properties": {
        "event_type": {"type": "string", "minLength": 1, "maxLength": 100},
        "client_payload": {"type": "object", "maxProperties": 10},
    },
}
ARGOCD_SYNC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "revision": {"type": "string"},
        "dryRun": {"type": "boolean"},
        "prune": {"type": "boolean"},
        "strategy": {"type": "object"},
        "resources": {"type": "array"},
        "syncOptions": {"type": "object"},
        "retryStrategy": {"type": "object"},
        "appNamespace": {"type": "string"},
        "project": {"type": "string"},
        "manifests": {"type": "array"},
        "infos": {"type": "array"},
    },
}


def deployment(image: str | None = "registry.example.com/team/api:v2") -> Deployment:
    return Deployment(
        id="d-42",
        service="api",
        image=image,
        previous_image="registry.example.com/team/api:v1",
        state=DeploymentState.ROLLING_BACK,
        started_at=1000.0,
        window_ends_at=1600.0,
        finished_at=None,
        facts=DeploymentFacts(),
    )


REASONS = (
    Reason(at=1100.0, text="error rate 0.2 > 0.05 for 1m", rule="error-rate", value=0.2, threshold=0.05),
)


def step_config(url: str, **extra: Any) -> WebhookStepConfig:
    return WebhookStepConfig.model_validate({"url": url, "retries": 0, **extra})


async def test_the_image_of_a_service_without_a_container_is_sent(fake_server: Server) -> None:
    bodies: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response()

    url = await fake_server(hook)
    target = rollback_target(deployment(), REASONS, NO_CONTAINER)
    result = await WebhookStep(step_config(url)).run(target)
    assert result.status == "done", result.detail
    assert bodies[0]["image"] == "registry.example.com/team/api:v2"
    assert bodies[0]["previous_image"] == "registry.example.com/team/api:v1"
    assert bodies[0]["rules"] == ["error-rate"]


async def test_github_repository_dispatch(fake_server: Server, tmp_path: Path) -> None:
    seen: list[tuple[str, str, dict[str, str], dict[str, Any]]] = []

    async def github(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.method, request.path, dict(request.headers), body))
        errors = [e.message for e in Draft202012Validator(GITHUB_DISPATCH).iter_errors(body)]
        if request.headers.get("Authorization") != f"Bearer {TOKEN}" or errors:
            return web.json_response({"message": "; ".join(errors) or "Bad credentials"}, status=422)
        return web.Response(status=204)

    base = await fake_server(github)
    (tmp_path / "token").write_text(f"Bearer {TOKEN}\n")
    config = load_config_text(
        f"""
services:
  api:
    rollback:
      steps: [webhook]
      webhook:
        url: {base}/repos/acme/api/dispatches
        headers:
          Accept: application/vnd.github+json
          X-GitHub-Api-Version: "2022-11-28"
        headers_file: {{Authorization: {tmp_path / "token"}}}
        expect: [204]
        template: |
          {{"event_type": "watchdogd-rollback",
           "client_payload": {{"service": {{{{ service | tojson }}}}, "image": {{{{ image | tojson }}}},
             "previous_image": {{{{ previous_image | tojson }}}},
             "deployment_id": {{{{ deployment_id | tojson }}}},
             "rollback_id": {{{{ rollback_id | tojson }}}},
             "reasons": {{{{ reasons | map(attribute="text") | list | tojson }}}}}}}}
""",
        "watchdogd.yaml",
    )
    svc = config.services["api"]
    assert svc.rollback.webhook is not None
    target = dataclasses.replace(rollback_target(deployment(), REASONS, svc), rollback_id="rb-7")
    step = WebhookStep(svc.rollback.webhook)
    result = await step.run(target)
    assert result.status == "done", result.detail
    method, path, headers, body = seen[0]
    assert (method, path) == ("POST", "/repos/acme/api/dispatches")
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["Idempotency-Key"] == "api:d-42"
    assert body == {
        "event_type": "watchdogd-rollback",
        "client_payload": {
            "service": "api",
            "image": "registry.example.com/team/api:v2",
            "previous_image": "registry.example.com/team/api:v1",
            "deployment_id": "d-42",
            "rollback_id": "rb-7",
            "reasons": ["error rate 0.2 > 0.05 for 1m"],
        },
    }
    described = "\n".join(await step.describe(target))
    assert "POST" in described and "watchdogd-rollback" in described
    assert TOKEN not in described and TOKEN not in repr(svc)


async def test_argocd_sync_with_a_bearer_token_from_the_environment(
    fake_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    async def argocd(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        errors = [e.message for e in Draft202012Validator(ARGOCD_SYNC).iter_errors(body)]
        if request.headers.get("Authorization") != "Bearer argo-t0ken" or errors:
            return web.json_response({"error": "; ".join(errors) or "unauthenticated"}, status=401)
        if request.path != f"/api/v1/applications/{body.get('name')}/sync":
            return web.json_response({"error": "name does not match the path"}, status=400)
        return web.json_response({"metadata": {"name": body["name"]}, "status": {}})

    base = await fake_server(argocd)
    monkeypatch.setenv("ARGOCD_AUTH", "Bearer argo-t0ken")
    config = load_config_text(
        f"""
services:
  api:
    rollback:
      steps: [webhook]
      webhook:
        url: {base}/api/v1/applications/api-prod/sync
        headers_env: {{Authorization: ARGOCD_AUTH}}
        expect: [200]
        template: |
          {{"name": "api-prod", "revision": {{{{ previous_image.split(":")[-1] | tojson }}}},
           "prune": false, "dryRun": false, "strategy": {{"hook": {{"force": false}}}}}}
""",
        "watchdogd.yaml",
    )
    svc = config.services["api"]
    assert svc.rollback.webhook is not None
    result = await WebhookStep(svc.rollback.webhook).run(rollback_target(deployment(), REASONS, svc))
    assert result.status == "done", result.detail
    assert seen == [
        {
            "name": "api-prod",
            "revision": "v1",
            "prune": False,
            "dryRun": False,
            "strategy": {"hook": {"force": False}},
        }
    ]


async def test_jenkins_job_with_form_parameters(fake_server: Server) -> None:
    seen: list[tuple[str, dict[str, list[str]]]] = []

    async def jenkins(request: web.Request) -> web.Response:
        seen.append((request.content_type, parse_qs(await request.text())))
        return web.Response(status=201, headers={"Location": "http://127.0.0.1/queue/item/7/"})

    base = await fake_server(jenkins)
    config = step_config(
        f"{base}/job/api-rollback/buildWithParameters",
        body="form",
        expect=[201],
        template='{"IMAGE": {{ previous_image | tojson }}, "BAD_IMAGE": {{ image | tojson }}, '
        '"WHY": {{ reason | tojson }}}',
    )
    result = await WebhookStep(config).run(rollback_target(deployment(), REASONS, NO_CONTAINER))
    assert result.status == "done", result.detail
    content_type, form = seen[0]
    assert content_type == "application/x-www-form-urlencoded"
    assert form == {
        "IMAGE": ["registry.example.com/team/api:v1"],
        "BAD_IMAGE": ["registry.example.com/team/api:v2"],
        "WHY": ["error-rate: error rate 0.2 > 0.05 for 1m"],
    }


async def test_an_unexpected_success_status_fails_and_names_the_answer(fake_server: Server) -> None:
    calls = 0

    async def wrong(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"message": "queued elsewhere"}, status=200)

    url = await fake_server(wrong)
    result = await WebhookStep(step_config(url, expect=[204], retries=2), backoff=0.01).run(
        rollback_target(deployment(), REASONS, NO_CONTAINER)
    )
    assert result.status == "failed"
    assert "HTTP 200, expected 204" in result.detail and "queued elsewhere" in result.detail
    assert calls == 1


async def test_put_method_and_the_refusal_body_in_the_failure(fake_server: Server) -> None:
    methods: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        methods.append(request.method)
        return web.json_response({"message": "event_type is required"}, status=422)

    url = await fake_server(refuse)
    result = await WebhookStep(step_config(url, method="PUT")).run(
        rollback_target(deployment(), REASONS, NO_CONTAINER)
    )
    assert methods == ["PUT"]
    assert (
        result.status == "failed"
        and "HTTP 422" in result.detail
        and "event_type is required" in result.detail
    )


def test_a_template_with_an_unknown_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(
            """
services:
  api:
    rollback:
      steps: [webhook]
      webhook:
        url: http://127.0.0.1:9/hook
        template: '{"image": {{ imgae | tojson }}}'
""",
            "watchdogd.yaml",
        )
    text = str(caught.value)
    assert "watchdogd.yaml:8" in text and "imgae" in text


def test_a_form_body_needs_a_template_of_flat_values() -> None:
    with pytest.raises(ValueError, match="form"):
        step_config("http://127.0.0.1:9/", body="form")
    with pytest.raises(ValueError, match="form"):
        step_config("http://127.0.0.1:9/", body="form", template='{"a": [1, 2]}')


def test_expect_is_a_list_of_2xx_or_4xx_statuses() -> None:
    with pytest.raises(ValueError):
        step_config("http://127.0.0.1:9/", expect=[302])
    assert step_config("http://127.0.0.1:9/", expect=[200, 409]).expect == (200, 409)


async def test_the_journal_keeps_the_image_for_a_resumed_plan() -> None:
    from watchdogd.rollback.plan import target_from_json, target_to_json

    target = rollback_target(deployment(), REASONS, NO_CONTAINER)
    again = target_from_json(json.loads(json.dumps(target_to_json(target))), NO_CONTAINER)
    assert WebhookStep(step_config("http://127.0.0.1:9/")).variables(again)["image"] == (
        "registry.example.com/team/api:v2"
    )


def test_a_template_sees_the_variables_the_config_checks_it_with() -> None:
    from watchdogd.config.webhook import SAMPLE

    target = rollback_target(deployment(), REASONS, NO_CONTAINER)
    variables = WebhookStep(step_config("http://127.0.0.1:9/")).variables(target)
    assert set(variables) == set(SAMPLE)
    assert set(variables["reasons"][0]) == set(SAMPLE["reasons"][0])


def test_the_example_deployer_configs_render_what_each_api_takes() -> None:
    from watchdogd.config import load_config

    config = load_config(
        Path(__file__).resolve().parents[2] / "config" / "examples" / "deployer-webhooks.yaml"
    )
    bodies = {}
    for name, svc in config.services.items():
        assert svc.rollback.webhook is not None
        body, headers = WebhookStep(svc.rollback.webhook).request(rollback_target(deployment(), REASONS, svc))
        assert headers["Authorization"].startswith(("Bearer ", "Basic "))
        bodies[name] = body
    github = json.loads(bodies["web"])
    assert not list(Draft202012Validator(GITHUB_DISPATCH).iter_errors(github))
    assert github["client_payload"]["image"] == "registry.example.com/team/api:v1"
    argocd = json.loads(bodies["api"])
    assert not list(Draft202012Validator(ARGOCD_SYNC).iter_errors(argocd)) and argocd["revision"] == "v1"
    assert parse_qs(bodies["worker"].decode())["IMAGE"] == ["registry.example.com/team/api:v1"]
