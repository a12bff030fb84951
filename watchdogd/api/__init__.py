"""The HTTP API: deployments, rollbacks and the operators' votes, plus health and metrics.

JSON in and out; errors are ``{"error": {"code", "message"}}`` with 400, 401,
403, 404, 409 or 422, never 500 for anything a client can send. Every route
but the open ones (``/healthz``, ``/readyz``, ``/metrics`` by default) needs a
bearer token from the tokens file; votes need the operator role.

This module holds the route table and the OpenAPI document describing it;
``guard`` the middlewares (errors, tokens, security headers), ``inputs`` the
body models and request parsing, ``views`` the JSON shapes answered, and one
module per group of routes: ``deployments``, ``rollbacks``, ``services``
(freezes, backups) and ``admin`` (health, metrics, audit, Alertmanager).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from watchdogd import ui
from watchdogd.api.admin import AUDIT_LIMIT, Admin
from watchdogd.api.deployments import Deployments
from watchdogd.api.guard import (
    SECURITY_HEADERS,
    STORE_RETRY_AFTER,
    THROTTLE,
    Guard,
    Handler,
    TooManyRequests,
    security_headers,
)
from watchdogd.api.inputs import (
    BODIES,
    IDEMPOTENCY_KEY,
    MAX_BODY,
    MAX_DURATION,
    Body,
    DeploymentBody,
    EmptyBody,
    FreezeBody,
    MigrationBody,
    ReasonBody,
    VetoBody,
)
from watchdogd.api.rollbacks import Rollbacks
from watchdogd.api.services import Services
from watchdogd.auth import Role, Tokens
from watchdogd.daemon import Daemon
from watchdogd.events import EventHub, events_handler, install

__all__ = [
    "AUDIT_LIMIT",
    "BODIES",
    "IDEMPOTENCY_KEY",
    "MAX_BODY",
    "MAX_DURATION",
    "OPENAPI_PATH",
    "SECURITY_HEADERS",
    "STORE_RETRY_AFTER",
    "THROTTLE",
    "Body",
    "DeploymentBody",
    "EmptyBody",
    "FreezeBody",
    "Handler",
    "MigrationBody",
    "ReasonBody",
    "TooManyRequests",
    "VetoBody",
    "create_app",
]

OPENAPI_PATH = "v1/openapi.json"
"""Open to anyone, whatever ``open_endpoints`` says: the document describes the API, nothing more."""


def create_app(
    daemon: Daemon,
    tokens: Tokens,
    open_endpoints: tuple[str, ...] = ("healthz", "readyz", "metrics"),
    outer: tuple[Middleware, ...] = (),
) -> web.Application:
    """The aiohttp application over ``daemon``; ``outer`` middlewares run before all others."""
    api = _Api(open_endpoints)
    guard = Guard(daemon, tokens, {*open_endpoints, OPENAPI_PATH}, api.roles)
    app = web.Application(middlewares=[*outer, guard.errors, guard.auth], client_max_size=MAX_BODY)
    app[THROTTLE] = guard.throttle
    app.on_response_prepare.append(security_headers)
    app.on_cleanup.append(guard.stop_probe)
    server = daemon.config.server
    hub = install(
        app,
        daemon.report,
        EventHub(
            max_streams=server.max_streams,
            max_streams_per_token=server.max_streams_per_token,
            rejections=guard.rejections,
        ),
    )
    admin, deployments = Admin(daemon), Deployments(daemon)
    rollbacks, services = Rollbacks(daemon), Services(daemon)
    routes: list[tuple[str, str, Handler, Role | None]] = [
        ("GET", "/healthz", admin.healthz, None),
        ("GET", "/readyz", admin.readyz, None),
        ("GET", "/metrics", admin.metrics, None),
        ("GET", "/v1/openapi.json", api.openapi, None),
        ("POST", "/v1/deployments", deployments.create_deployment, "deployer"),
        ("GET", "/v1/deployments", deployments.list_deployments, "viewer"),
        ("GET", "/v1/deployments/{id}", deployments.get_deployment, "viewer"),
        ("POST", "/v1/deployments/{id}/promote", deployments.promote, "operator"),
        ("POST", "/v1/deployments/{id}/rollback", rollbacks.manual_rollback, "operator"),
        ("GET", "/v1/rollbacks", rollbacks.list_rollbacks, "viewer"),
        ("GET", "/v1/rollbacks/{id}", rollbacks.get_rollback, "viewer"),
        ("POST", "/v1/rollbacks/{id}/ack", rollbacks.ack, "operator"),
        ("POST", "/v1/rollbacks/{id}/veto", rollbacks.veto, "operator"),
        ("POST", "/v1/rollbacks/{id}/approve", rollbacks.approve, "operator"),
        ("POST", "/v1/rollbacks/{id}/retry", rollbacks.retry, "operator"),
        ("GET", "/v1/audit", admin.audit, "viewer"),
        ("GET", "/v1/freezes", services.list_freezes, "viewer"),
        ("POST", "/v1/services/{service}/freeze", services.freeze, "operator"),
        ("DELETE", "/v1/services/{service}/freeze", services.unfreeze, "operator"),
        ("POST", "/v1/services/{service}/backups", services.take_backup, "deployer"),
        ("GET", "/v1/services/{service}/backups", services.list_backups, "viewer"),
        ("GET", "/v1/whoami", admin.whoami, "viewer"),
        ("GET", "/v1/events", events_handler(hub), "viewer"),
        ("POST", "/v1/deployments/{id}/rehearse", deployments.rehearse, "operator"),
        ("POST", "/v1/alertmanager", admin.alertmanager, "deployer"),
    ]
    for method, path, handler, role in routes:
        route = app.router.add_route(method, path, handler)
        api.roles[route] = role
    for method, path, handler in ui.ROUTES:
        app.router.add_route(method, path, handler)  # open: the page holds no data, its calls a token
    return app


class _Api:
    """The route table as served: the role each route needs (what ``Guard.auth`` asks) and
    the OpenAPI document describing them."""

    def __init__(self, documented_open: tuple[str, ...] = ()) -> None:
        self.roles: dict[Any, Role | None] = {}
        self.documented_open = documented_open
        self._document: dict[str, Any] | None = None

    @property
    def document(self) -> dict[str, Any]:
        """The OpenAPI document, made at the first request for it: its models are not kept
        in memory by a daemon nobody asks (a sidecar)."""
        if self._document is None:
            from watchdogd import openapi

            self._document = openapi.document(BODIES, self.documented_open)
        return self._document

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)
