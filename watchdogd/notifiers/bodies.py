"""The requests one event makes for one target, as each vendor documents its API.

Pure: an event and a target's config in, zero or more requests out (PagerDuty
and Opsgenie hear only about what opens and ends an incident; an Opsgenie
alert is closed at its own URL). Secrets are read here, from the config's
inline value, file or environment variable, each time a request is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from watchdogd.config.notify import (
    OpsgenieNotify,
    PagerDutyNotify,
    SlackNotify,
    TargetBase,
    TeamsNotify,
    WebhookNotify,
)
from watchdogd.notifiers.template import render_json

OPENS = frozenset({"proposal", "rollback_failed"})
"""Kinds that open (or update) an incident on a pager: someone should look now."""
ENDS = frozenset({"veto", "cancelled", "rollback_succeeded"})
"""Kinds that end the incident of a rollback: nothing is left to do."""
TITLES = {
    "proposal": "Rollback proposed",
    "dry_run_proposal": "Dry run: rollback proposed",
    "approval": "Rollback approved",
    "veto": "Rollback vetoed",
    "rollback_started": "Rollback started",
    "rollback_succeeded": "Rollback succeeded",
    "rollback_failed": "Rollback FAILED",
    "dry_run": "Dry run: rollback would have run",
    "cancelled": "Rollback proposal cancelled",
    "retry": "Rollback retried",
    "promotion": "Deployment promoted",
    "unverified": "Deployment unverified",
    "rule_firing": "Rule firing",
    "rule_resolved": "Rule resolved",
    "rule_blind": "Rule has no data",
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One POST: where (the real URL, for the client only), what, and with which headers."""

    url: str
    body: bytes
    headers: dict[str, str]


def variables(event: Any, target: TargetBase) -> dict[str, Any]:
    """The template variables; documented in docs/notifications.md ("Templates")."""
    from watchdogd.notify import payload, text

    structured = payload(event, "json")
    fields = {
        k: v
        for k, v in structured.items()
        if k not in ("text", "event", "service", "deployment_id", "rollback_id", "at")
    }
    page = target.page_url.rstrip("/") if target.page_url else None
    link = f"{page}#rollback-{event.rollback_id}" if page and event.rollback_id else page
    return {
        "event": event.kind,
        "title": TITLES.get(event.kind, event.kind.replace("_", " ")),
        "service": event.service,
        "deployment_id": event.deployment_id,
        "rollback_id": event.rollback_id,
        "at": structured["at"],
        "at_unix": event.at,
        "summary": event.summary,
        "text": text(event),
        "fields": fields,
        "reasons": fields.get("reasons") or [],
        "actor": fields.get("actor"),
        "image": fields.get("image"),
        "previous_image": fields.get("previous_image"),
        "page_url": page,
        "link": link,
        "dedup_key": dedup_key(event),
    }


def dedup_key(event: Any) -> str:
    """One incident per rollback (per deployment for events outside a rollback)."""
    if event.rollback_id:
        return f"watchdogd/{event.service}/rollback/{event.rollback_id}"
    return f"watchdogd/{event.service}/deployment/{event.deployment_id}"


def outgoing(target: TargetBase, event: Any) -> list[Outgoing]:
    """The requests ``event`` makes for ``target``; ``[]`` when the target has nothing to say."""
    values = variables(event, target)
    headers = {"Content-Type": "application/json", "User-Agent": "watchdogd"}
    headers.update(target.header_values())

    def body(default: Any) -> bytes:
        if target.template is not None:
            return render_json(target.template, values)
        return json.dumps(default, allow_nan=False, ensure_ascii=False).encode()

    if isinstance(target, PagerDutyNotify):
        return _pagerduty(target, event, values, headers)
    if isinstance(target, OpsgenieNotify):
        return _opsgenie(target, event, values, headers)
    url = target.secret("url")
    if isinstance(target, SlackNotify):
        return [Outgoing(url, body(slack_blocks(values)), headers)]
    if isinstance(target, TeamsNotify):
        return [Outgoing(url, body(teams_card(values)), headers)]
    if isinstance(target, WebhookNotify):
        from watchdogd.notify import payload

        return [Outgoing(url, body(payload(event, target.format)), headers)]
    raise TypeError(f"unknown notification target {type(target).__name__}")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason_lines(values: dict[str, Any]) -> list[str]:
    lines = []
    for reason in values["reasons"][:10]:
        if isinstance(reason, dict):
            head = f"{reason['rule']}: " if reason.get("rule") else ""
            lines.append(head + str(reason.get("reason", "")))
    return lines


def _facts(values: dict[str, Any]) -> list[tuple[str, str]]:
    facts = [("Service", values["service"]), ("Deployment", values["deployment_id"])]
    if values["rollback_id"]:
        facts.append(("Rollback", values["rollback_id"]))
    for key in ("state", "actor", "image", "previous_image", "execute_at", "error", "reason"):
        value = values["fields"].get(key)
        if value is not None and value != "":
            facts.append((key.replace("_", " ").capitalize(), str(value)))
    return facts


def slack_blocks(values: dict[str, Any]) -> dict[str, Any]:
    """Slack Block Kit: header, what happened, facts, reasons, and buttons to the operator page."""
    from watchdogd.notify import slack_escape

    title = f"{values['title']}: {values['service']}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150), "emoji": False}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(slack_escape(values["summary"]), 3000)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{k}*\n{slack_escape(v)}", 2000)}
                for k, v in _facts(values)[:10]
            ],
        },
    ]
    reasons = _reason_lines(values)
    if reasons:
        text = "\n".join(f"• {slack_escape(line)}" for line in reasons)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, 3000)}})
    if values["link"]:
        label = "Veto or approve" if values["event"] == "proposal" else "Open the operator page"
        button: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": label},
            "url": _cut(values["link"], 3000),
            "action_id": "watchdogd-open",
        }
        if values["event"] == "proposal":
            button["style"] = "danger"
        blocks.append({"type": "actions", "elements": [button]})
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"watchdogd · {values['at']}"}]}
    )
    return {"text": _cut(slack_escape(values["text"]), 3000), "blocks": blocks}


def teams_card(values: dict[str, Any]) -> dict[str, Any]:
    """A Teams message with one Adaptive Card (version 1.4)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": f"{values['title']}: {values['service']}",
            "size": "Large",
            "weight": "Bolder",
            "wrap": True,
            "color": "Attention" if values["event"] in OPENS else "Default",
        },
        {"type": "TextBlock", "text": values["summary"], "wrap": True},
        {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(values)]},
    ]
    for line in _reason_lines(values):
        body.append({"type": "TextBlock", "text": f"- {line}", "wrap": True, "spacing": "None"})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if values["link"]:
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": "Open the operator page", "url": values["link"]}
        ]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def _pagerduty(
    target: PagerDutyNotify, event: Any, values: dict[str, Any], headers: dict[str, str]
) -> list[Outgoing]:
    if event.rollback_id is None or event.kind not in OPENS | ENDS:
        return []
    key = target.secret("routing_key")
    if event.kind in ENDS:
        body: dict[str, Any] = {
            "routing_key": key,
            "event_action": "resolve",
            "dedup_key": values["dedup_key"],
        }
    else:
        body = {
            "routing_key": key,
            "event_action": "trigger",
            "dedup_key": values["dedup_key"],
            "payload": {
                "summary": _cut(f"{values['title']}: {values['service']}: {values['summary']}", 1024),
                "source": values["service"],
                "severity": target.severity,
                "timestamp": values["at"],
                "component": values["service"],
                "group": "watchdogd",
                "class": event.kind,
                "custom_details": values["fields"],
            },
            "client": "watchdogd",
        }
        if values["link"]:
            body["client_url"] = values["link"]
            body["links"] = [{"href": values["link"], "text": "watchdogd operator page"}]
    if target.template is not None:
        rendered = json.loads(render_json(target.template, values))
        if isinstance(rendered, dict):
            rendered["routing_key"] = key  # the key never passes through a template
        body = rendered
    return [Outgoing(target.url.secret(), json.dumps(body, ensure_ascii=False).encode(), headers)]


def _opsgenie(
    target: OpsgenieNotify, event: Any, values: dict[str, Any], headers: dict[str, str]
) -> list[Outgoing]:
    if event.rollback_id is None or event.kind not in OPENS | ENDS:
        return []
    headers = {**headers, "Authorization": f"GenieKey {target.secret('api_key')}"}
    base = target.url.secret().rstrip("/")
    alias = values["dedup_key"]
    if event.kind in ENDS:
        url = f"{base}/{quote(alias, safe='')}/close?identifierType=alias"
        body: Any = {"source": "watchdogd", "user": "watchdogd", "note": _cut(values["text"], 25000)}
        return [Outgoing(url, json.dumps(body, ensure_ascii=False).encode(), headers)]
    details = {k: _cut(v if isinstance(v, str) else json.dumps(v), 1000) for k, v in values["fields"].items()}
    body = {
        "message": _cut(f"{values['title']}: {values['service']}", 130),
        "alias": _cut(alias, 512),
        "description": _cut(values["text"] + "\n" + "\n".join(_reason_lines(values)), 15000),
        "details": details,
        "entity": _cut(values["service"], 512),
        "source": "watchdogd",
        "priority": target.priority,
        "tags": list(target.tags),
    }
    if target.responders:
        body["responders"] = [dict(r) for r in target.responders]
    if values["link"]:
        details["operator_page"] = values["link"]
    if target.template is not None:
        return [Outgoing(base, render_json(target.template, values), headers)]
    return [Outgoing(base, json.dumps(body, ensure_ascii=False).encode(), headers)]
