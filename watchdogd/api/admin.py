"""The daemon's own routes: liveness, readiness, Prometheus metrics, who a token is, the audit
trail, and the Alertmanager webhook that pushes alerts to its sources."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watchdogd.api.guard import actor
from watchdogd.api.inputs import count, read_body
from watchdogd.api.views import time_json
from watchdogd.auth import Principal
from watchdogd.daemon import Daemon
from watchdogd.errors import RequestError
from watchdogd.events import PRINCIPAL
from watchdogd.sources.alertmanager import MAX_PAYLOAD_BYTES, WebhookPayload

log = structlog.get_logger("watchdogd.api")

AUDIT_LIMIT = 500


class Admin:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    # --- open -------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        health = self.daemon.health
        if health.ready:
            if self.daemon.election.shared:
                return web.json_response({"status": "ok", "leader": self.daemon.election.leading})
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "not_ready", "reason": health.problem}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.daemon.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- with a token ---------------------------------------------------------------------------

    async def whoami(self, request: web.Request) -> web.Response:
        """The token's name and role: what the operator page shows and which buttons it offers."""
        principal: Principal = request[PRINCIPAL]
        return web.json_response({"name": principal.name, "role": principal.role})

    async def audit(self, request: web.Request) -> web.Response:
        """Newest first, ``limit`` at a time; ``next`` is the ``before`` that gets the page after."""
        query = request.query
        since = None
        if "since" in query:
            try:
                since = datetime.fromisoformat(query["since"].replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise RequestError(
                    status=400, code="bad_request", message="since: write an RFC 3339 time"
                ) from None
        limit = count(query, "limit", 1, AUDIT_LIMIT) or AUDIT_LIMIT
        before = count(query, "before", 1, 2**62)
        entries = await self.daemon.store.audit_entries(
            query.get("deployment"), query.get("actor"), since, limit=limit + 1, before=before
        )
        more = len(entries) > limit
        entries = entries[:limit]
        items = [
            {
                "seq": e.seq,
                "at": time_json(e.at),
                "actor": e.actor,
                "action": e.action,
                "deployment_id": e.deployment_id,
                "rollback_id": e.rollback_id,
                "detail": e.detail,
            }
            for e in entries
        ]
        cursor = entries[-1].seq if more else None
        return web.json_response({"items": items, "next": cursor}, dumps=_dumps)

    # --- pushed alerts --------------------------------------------------------------------------

    async def alertmanager(self, request: web.Request) -> web.Response:
        # 413 before parsing: a notification's size, not only its alert count, is bounded
        too_large = RequestError(
            status=413,
            code="too_large",
            message=f"an Alertmanager notification over {MAX_PAYLOAD_BYTES} bytes",
        )
        if request.content_length is not None and request.content_length > MAX_PAYLOAD_BYTES:
            raise too_large
        try:
            raw = await request.read()  # kept by the request: read_body reads the same bytes
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise too_large
        body: WebhookPayload = await read_body(request, WebhookPayload)
        sources = self.daemon.alertmanager(body)
        firing = sum(1 for a in body.alerts if a.status == "firing")
        log.info(
            "alertmanager_notification",
            receiver=body.receiver,
            status=body.status,
            alerts=len(body.alerts),
            firing=firing,
            sources=sources,
            actor=actor(request),
        )
        return web.json_response({"status": "ok", "alerts": len(body.alerts), "sources": sources})


def _dumps(data: Any) -> str:
    return json.dumps(
        data, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)
    )
