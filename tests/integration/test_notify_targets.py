"""Each notification target against a local receiver that checks its body against the vendor's schema.

The schemas below are written from each vendor's public API reference
(PagerDuty Events API v2, Opsgenie Alert API, Slack Block Kit, Microsoft Teams
incoming webhooks with an Adaptive Card) and hold the limits those documents
state: a body that breaks one would be refused, or cut, by the real service.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError
from structlog.testing import capture_logs

from tests.integration.test_notify import AT, Server
from watchdogd.config.loader import load_config_text
from watchdogd.config.models import NotifyTarget
from watchdogd.notify import Event, Notifier

pytestmark = pytest.mark.integration

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, as PagerDuty issues them
_STR = {"type": "string", "minLength": 1}

PAGERDUTY = {
    "type": "object",
    "required": ["routing_key", "event_action", "dedup_key"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "minLength": 1, "maxLength": 255},
        "payload": {
            "type": "object",
            "required": ["summary", "source", "severity"],
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": _STR,
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "component": {"type": "string"},
                "group": {"type": "string"},
                "class": {"type": "string"},
                "custom_details": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "images": {"type": "array"},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["href"],
                "properties": {
                    "href": {"type": "string", "pattern": "^https?://"},
                    "text": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "client": {"type": "string"},
        "client_url": {"type": "string", "pattern": "^https?://"},
    },
    "additionalProperties": False,
    "if": {"properties": {"event_action": {"const": "trigger"}}},
    "then": {"required": ["payload"]},
    "else": {"not": {"required": ["payload"]}},
}

OPSGENIE_CREATE = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {"type": "string", "minLength": 1, "maxLength": 130},
        "alias": {"type": "string", "maxLength": 512},
        "description": {"type": "string", "maxLength": 15000},
        "responders": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["team", "user", "escalation", "schedule"]}},
            },
        },
        "visibleTo": {"type": "array"},
        "actions": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 50}},
        "tags": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 50}},
        "details": {"type": "object", "additionalProperties": {"type": "string"}},
        "entity": {"type": "string", "maxLength": 512},
        "source": {"type": "string", "maxLength": 100},
        "priority": {"enum": ["P1", "P2", "P3", "P4", "P5"]},
        "user": {"type": "string", "maxLength": 100},
        "note": {"type": "string", "maxLength": 25000},
    },
    "additionalProperties": False,
}
OPSGENIE_CLOSE = {
    "type": "object",
    "properties": {
        "user": {"type": "string", "maxLength": 100},
        "source": {"type": "string", "maxLength": 100},
        "note": {"type": "string", "maxLength": 25000},
    },
    "additionalProperties": False,
}

_PLAIN = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "plain_text"}, "text": {"type": "string"}, "emoji": {"type": "boolean"}},
    "additionalProperties": False,
}
_MRKDWN = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "mrkdwn"}, "text": {"type": "string", "maxLength": 3000}},
    "additionalProperties": False,
}
SLACK = {
    "type": "object",
    "required": ["text", "blocks"],
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "blocks": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {
                            "type": {"const": "header"},
                            "text": {
                                **_PLAIN,
                                "properties": {**_PLAIN["properties"], "text": {"maxLength": 150}},
                            },
                        },
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"const": "section"},
                            "text": _MRKDWN,
                            "fields": {
                                "type": "array",
                                "maxItems": 10,
                                "items": {
                                    **_MRKDWN,
                                    "properties": {**_MRKDWN["properties"], "text": {"maxLength": 2000}},
                                },
                            },
                        },
                        "anyOf": [{"required": ["text"]}, {"required": ["fields"]}],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "required": ["type", "elements"],
                        "properties": {
                            "type": {"const": "actions"},
                            "elements": {
                                "type": "array",
                                "maxItems": 25,
                                "items": {
                                    "type": "object",
                                    "required": ["type", "text"],
                                    "properties": {
                                        "type": {"const": "button"},
                                        "text": {
                                            **_PLAIN,
                                            "properties": {**_PLAIN["properties"], "text": {"maxLength": 75}},
                                        },
                                        "url": {"type": "string", "maxLength": 3000, "pattern": "^https?://"},
                                        "action_id": {"type": "string", "maxLength": 255},
                                        "style": {"enum": ["primary", "danger"]},
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "required": ["type", "elements"],
                        "properties": {
                            "type": {"const": "context"},
                            "elements": {
                                "type": "array",
                                "maxItems": 10,
                                "items": {"anyOf": [_MRKDWN, _PLAIN]},
                            },
                        },
                        "additionalProperties": False,
                    },
                ]
            },
        },
    },
    "additionalProperties": False,
}

_TEXTBLOCK = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {
        "type": {"const": "TextBlock"},
        "text": {"type": "string"},
        "size": {"enum": ["Small", "Default", "Medium", "Large", "ExtraLarge"]},
        "weight": {"enum": ["Lighter", "Default", "Bolder"]},
        "color": {"enum": ["Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"]},
        "wrap": {"type": "boolean"},
        "spacing": {"enum": ["None", "Small", "Default", "Medium", "Large", "ExtraLarge", "Padding"]},
    },
    "additionalProperties": False,
}
_FACTSET = {
    "type": "object",
    "required": ["type", "facts"],
    "properties": {
        "type": {"const": "FactSet"},
        "facts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["title", "value"],
                "properties": {"title": {"type": "string"}, "value": {"type": "string"}},
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
TEAMS = {
    "type": "object",
    "required": ["type", "attachments"],
    "properties": {
        "type": {"const": "message"},
        "attachments": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["contentType", "content"],
                "properties": {
                    "contentType": {"const": "application/vnd.microsoft.card.adaptive"},
                    "contentUrl": {"type": "null"},
                    "content": {
                        "type": "object",
                        "required": ["type", "version", "body"],
                        "properties": {
                            "$schema": {"const": "http://adaptivecards.io/schemas/adaptive-card.json"},
                            "type": {"const": "AdaptiveCard"},
                            "version": {"enum": ["1.0", "1.1", "1.2", "1.3", "1.4", "1.5"]},
                            "body": {"type": "array", "items": {"oneOf": [_TEXTBLOCK, _FACTSET]}},
                            "actions": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type", "url"],
                                    "properties": {
                                        "type": {"const": "Action.OpenUrl"},
                                        "title": {"type": "string"},
                                        "url": {"type": "string", "pattern": "^https?://"},
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def check(schema: dict[str, Any], body: Any) -> None:
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


class Vendor:
    """A receiver on 127.0.0.1 that refuses (400) a body its schema refuses, as the real API would."""

    def __init__(self, schemas: dict[str, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.got: list[tuple[str, str, dict[str, str], Any]] = []
        self.refused: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.got.append((request.method, request.path_qs, dict(request.headers), body))
        schema = next((s for suffix, s in self.schemas.items() if request.path.endswith(suffix)), None)
        if schema is None:
            self.refused.append(f"no route {request.path}")
            return web.Response(status=404)
        try:
            check(schema, body)
        except AssertionError as exc:
            self.refused.append(str(exc))
            return web.json_response({"message": str(exc)}, status=400)
        return web.json_response({"status": "success"}, status=202)


def target(raw: dict[str, Any]) -> Any:
    return TypeAdapter(NotifyTarget).validate_python({"timeout": "2s", **raw})


def event(kind: Any, rollback: str | None = "rb1", **fields: Any) -> Event:
    return Event(
        kind=kind,
        service="api",
        deployment_id="dep1",
        rollback_id=rollback,
        at=AT,
        summary="error-rate 0.2 > 0.05 for 5m",
        fields=fields
        or {
            "reasons": [
                {"rule": "error-rate", "reason": "0.2 > 0.05 for 5m", "value": 0.2, "threshold": 0.05}
            ],
            "execute_at": AT + 60,
            "state": "pending",
            "image": "registry/app:v2",
        },
    )


async def deliver(config: Any, *events: Event) -> None:
    notifier = Notifier([config], backoff=0.0)
    notifier.start()
    for one in events:
        notifier.notify(one)
    await notifier.close(10)


async def test_pagerduty_triggers_on_a_proposal_and_resolves_with_the_same_dedup_key(
    fake_server: Server, tmp_path: Path
) -> None:
    vendor = Vendor({"/v2/enqueue": PAGERDUTY})
    url = await fake_server(vendor.handle)
    key_file = tmp_path / "routing-key"
    key_file.write_text(ROUTING_KEY + "\n")
    config = target(
        {
            "type": "pagerduty",
            "url": url + "/v2/enqueue",
            "routing_key_file": str(key_file),
            "page_url": "https://watchdogd.example/ui",
        }
    )
    await deliver(
        config,
        event("proposal"),
        event("rule_firing", rollback=None),  # no incident of its own: not paged
        event("rollback_started", state="executing"),
        event("rollback_failed", state="failed", error="container: no such container"),
        event("rollback_succeeded", state="succeeded"),
        event("proposal", rollback="rb2"),
        event("veto", rollback="rb2", actor="alice", reason="known spike"),
    )
    assert vendor.refused == []
    actions = [(body["event_action"], body["dedup_key"]) for _, _, _, body in vendor.got]
    assert actions == [
        ("trigger", "watchdogd/api/rollback/rb1"),
        ("trigger", "watchdogd/api/rollback/rb1"),
        ("resolve", "watchdogd/api/rollback/rb1"),
        ("trigger", "watchdogd/api/rollback/rb2"),
        ("resolve", "watchdogd/api/rollback/rb2"),
    ]
    first = vendor.got[0][3]
    assert first["routing_key"] == ROUTING_KEY
    assert first["payload"]["severity"] == "critical" and first["payload"]["source"] == "api"
    assert first["payload"]["custom_details"]["image"] == "registry/app:v2"
    assert first["links"] == [
        {"href": "https://watchdogd.example/ui#rollback-rb1", "text": "watchdogd operator page"}
    ]


async def test_opsgenie_opens_an_alert_per_rollback_and_closes_it_by_alias(
    fake_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    vendor = Vendor({"/close": OPSGENIE_CLOSE, "/v2/alerts": OPSGENIE_CREATE})
    url = await fake_server(vendor.handle)
    monkeypatch.setenv("OPSGENIE_KEY_FOR_TEST", "genie-0123")
    config = target(
        {
            "type": "opsgenie",
            "url": url + "/v2/alerts",
            "api_key_env": "OPSGENIE_KEY_FOR_TEST",
            "priority": "P1",
            "responders": [{"type": "team", "name": "sre"}],
        }
    )
    await deliver(config, event("proposal"), event("rollback_succeeded", state="succeeded"))
    assert vendor.refused == []
    (_, create_path, create_headers, create), (_, close_path, close_headers, _) = vendor.got
    assert create_path == "/v2/alerts"
    assert create["alias"] == "watchdogd/api/rollback/rb1" and create["priority"] == "P1"
    assert create["responders"] == [{"type": "team", "name": "sre"}]
    assert close_path == "/v2/alerts/watchdogd%2Fapi%2Frollback%2Frb1/close?identifierType=alias"
    assert create_headers["Authorization"] == close_headers["Authorization"] == "GenieKey genie-0123"


async def test_slack_block_kit_with_a_button_to_the_operator_page(fake_server: Server) -> None:
    vendor = Vendor({"/hook": SLACK})
    url = await fake_server(vendor.handle)
    config = target({"type": "slack", "url": url + "/hook", "page_url": "https://watchdogd.example/ui/"})
    long_reason = {"reasons": [{"rule": "r", "reason": "<!channel> " + "x" * 5000}], "state": "pending"}
    await deliver(
        config,
        event("proposal"),
        event("promotion", rollback=None, state="promoted"),
        event("proposal", rollback="rb3", **long_reason),
    )
    assert vendor.refused == []
    blocks = vendor.got[0][3]["blocks"]
    button = next(b for b in blocks if b["type"] == "actions")["elements"][0]
    assert button["url"] == "https://watchdogd.example/ui#rollback-rb1" and button["style"] == "danger"
    assert blocks[0]["text"]["text"] == "Rollback proposed: api"
    assert "<!channel>" not in str(vendor.got[2][3])  # escaped: nobody is pinged by a reason


async def test_teams_adaptive_card(fake_server: Server) -> None:
    vendor = Vendor({"/webhook": TEAMS})
    url = await fake_server(vendor.handle)
    config = target({"type": "teams", "url": url + "/webhook", "page_url": "https://w.example/ui"})
    await deliver(config, event("proposal"), event("rollback_failed", state="failed", error="boom"))
    assert vendor.refused == []
    card = vendor.got[1][3]["attachments"][0]["content"]
    assert card["body"][0]["text"] == "Rollback FAILED: api"
    assert {"title": "Error", "value": "boom"} in card["body"][2]["facts"]
    assert card["actions"][0]["url"] == "https://w.example/ui#rollback-rb1"


async def test_a_generic_webhook_sends_its_headers_and_a_sandboxed_template(
    fake_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = {
        "type": "object",
        "required": ["title", "service", "image", "reasons", "link"],
        "properties": {"reasons": {"type": "array", "items": {"type": "string"}}},
    }
    vendor = Vendor({"/hook": schema})
    url = await fake_server(vendor.handle)
    monkeypatch.setenv("HOOK_AUTH_FOR_TEST", "Bearer from-env")
    template = (
        '{"title": {{ title|tojson }}, "service": {{ service|tojson }}, "image": {{ image|tojson }},'
        ' "reasons": [{% for r in reasons %}{{ r.reason|tojson }}{{ "," if not loop.last }}{% endfor %}],'
        ' "link": {{ link|tojson }}}'
    )
    config = target(
        {
            "type": "webhook",
            "url": url + "/hook",
            "headers": {"X-Team": "payments"},
            "headers_env": {"Authorization": "HOOK_AUTH_FOR_TEST"},
            "template": template,
            "page_url": "https://w.example/ui",
        }
    )
    await deliver(config, event("proposal"))
    assert vendor.refused == []
    _, _, headers, body = vendor.got[0]
    assert headers["X-Team"] == "payments" and headers["Authorization"] == "Bearer from-env"
    assert body == {
        "title": "Rollback proposed",
        "service": "api",
        "image": "registry/app:v2",
        "reasons": ["0.2 > 0.05 for 5m"],
        "link": "https://w.example/ui#rollback-rb1",
    }


async def test_a_template_that_breaks_out_of_the_sandbox_or_is_not_json_sends_nothing(
    fake_server: Server,
) -> None:
    vendor = Vendor({"/hook": {}})
    url = await fake_server(vendor.handle)
    escape = target({"type": "webhook", "url": url + "/hook", "template": "{{ service.__class__.__mro__ }}"})
    not_json = target({"type": "webhook", "url": url + "/hook", "template": "service: {{ service }}"})
    with capture_logs() as logs:
        await deliver(escape, event("proposal"))
        await deliver(not_json, event("proposal"))
    assert vendor.got == []
    failed = [e["reason"] for e in logs if e["event"] == "notification_failed"]
    assert len(failed) == 2
    assert "sandbox" in failed[0] or "unsafe" in failed[0], failed
    assert "did not render JSON" in failed[1], failed


def test_secrets_and_templates_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    def problem(notify: str) -> str:
        with pytest.raises(Exception) as caught:
            load_config_text(f"notify:\n  - {notify}\n", "watchdogd.yaml", tmp_path)
        return str(caught.value)

    assert "give routing_key, routing_key_file or routing_key_env" in problem("{type: pagerduty}")
    assert "give only one of url, url_env" in problem("{type: slack, url: 'http://x/', url_env: X}")
    assert "write an absolute path" in problem("{type: teams, url_file: secrets/teams}")
    assert "template line 1" in problem("{type: webhook, url: 'http://x/', template: '{{ oops'}")
    with pytest.raises(ValidationError):
        target({"type": "webhook", "url": "http://x/", "headers": {"Bad Header": "v"}})


def test_jinja2_is_imported_only_when_a_template_is_configured(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from watchdogd.config.loader import load_config_text\n"
        "from watchdogd.notify import Notifier\n"
        "config = load_config_text(sys.argv[1], 'w.yaml')\n"
        "Notifier(config.notify)\n"
        "print('jinja2' in sys.modules)\n"
    )
    plain = "notify:\n  - {type: slack, url: 'http://127.0.0.1:9/'}\n"
    templated = "notify:\n  - {type: webhook, url: 'http://127.0.0.1:9/', template: '{}'}\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for text, expected in ((plain, "False"), (templated, "True")):
        out = subprocess.run(
            [sys.executable, "-c", code, text], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.stdout.strip() == expected, out.stderr


async def test_a_failing_pager_does_not_hold_back_the_chat(fake_server: Server) -> None:
    async def down(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=503)

    pager = await fake_server(down)
    vendor = Vendor({"/hook": SLACK})
    chat = await fake_server(vendor.handle)
    notifier = Notifier(
        [
            target(
                {
                    "type": "pagerduty",
                    "url": pager + "/v2/enqueue",
                    "routing_key": ROUTING_KEY,
                    "timeout": "1s",
                }
            ),
            target({"type": "slack", "url": chat + "/hook"}),
        ],
        backoff=0.0,
    )
    notifier.start()
    notifier.notify(event("proposal"))
    for _ in range(100):
        if vendor.got:
            break
        await asyncio.sleep(0.05)
    assert len(vendor.got) == 1
    await notifier.close(0.1)
