"""The HTTP API: deployments, rollbacks and the operators' votes, plus health and metrics.

JSON in and out; errors are ``{"error": {"code", "message"}}`` with 400, 401,
403, 404, 409 or 422, never 500 for anything a client can send. Every route
but the open ones (``/healthz``, ``/readyz``, ``/metrics`` by default) needs a
bearer token from the tokens file; votes need the operator role.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from watchdogd import ui
from watchdogd.auth import Principal, Rejections, Role, Throttle, Tokens
from watchdogd.config.types import DURATION_PATTERN, parse_duration
from watchdogd.daemon import Daemon
from watchdogd.decisions import group_of_record, group_outcomes
from watchdogd.errors import Invalid, NotFound, RequestError, StoreError
from watchdogd.events import PRINCIPAL, EventHub, events_handler, install
from watchdogd.model import Deployment, RollbackRecord, jsonable_number
from watchdogd.rollback.migrations import MigrationRequest
from watchdogd.sources.alertmanager import MAX_PAYLOAD_BYTES, WebhookPayload
from watchdogd.watch.deployments import Registration
from watchdogd.watch.freezes import freeze_json
from watchdogd.watch.live import RuleView

if TYPE_CHECKING:
    from watchdogd.rollback.backups import Backup

log = structlog.get_logger("watchdogd.api")

MAX_BODY = 1 << 20
MAX_DURATION = 366 * 86400.0
"""The longest window or mute a request may ask for: beyond it times stop being printable."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
THROTTLE = web.AppKey("throttle", Throttle)
STORE_RETRY_AFTER = 5
"""Seconds a client is told to wait (Retry-After) when the state store refuses a request."""
AUDIT_LIMIT = 500
OPENAPI_PATH = "v1/openapi.json"
"""Open to anyone, whatever ``open_endpoints`` says: the document describes the API, nothing more."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'",
    "Cache-Control": "no-store",
}
"""On every answer: nothing here is a page to frame, sniff, cache or follow links from."""


class TooManyRequests(RequestError):
    status = 429
    code = "too_many_requests"


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


def create_app(
    daemon: Daemon,
    tokens: Tokens,
    open_endpoints: tuple[str, ...] = ("healthz", "readyz", "metrics"),
    outer: tuple[Middleware, ...] = (),
) -> web.Application:
    """The aiohttp application over ``daemon``; ``outer`` middlewares run before all others."""
    api = _Api(daemon, tokens, {*open_endpoints, OPENAPI_PATH}, open_endpoints)
    app = web.Application(middlewares=[*outer, api.errors, api.auth], client_max_size=MAX_BODY)
    app[THROTTLE] = api.throttle
    app.on_response_prepare.append(_security_headers)
    app.on_cleanup.append(api.stop_probe)
    server = daemon.config.server
    hub = install(
        app,
        daemon.report,
        EventHub(
            max_streams=server.max_streams,
            max_streams_per_token=server.max_streams_per_token,
            rejections=api.rejections,
        ),
    )
    routes: list[tuple[str, str, Handler, Role | None]] = [
        ("GET", "/healthz", api.healthz, None),
        ("GET", "/readyz", api.readyz, None),
        ("GET", "/metrics", api.metrics, None),
        ("GET", "/v1/openapi.json", api.openapi, None),
        ("POST", "/v1/deployments", api.create_deployment, "deployer"),
        ("GET", "/v1/deployments", api.list_deployments, "viewer"),
        ("GET", "/v1/deployments/{id}", api.get_deployment, "viewer"),
        ("POST", "/v1/deployments/{id}/promote", api.promote, "operator"),
        ("POST", "/v1/deployments/{id}/rollback", api.manual_rollback, "operator"),
        ("GET", "/v1/rollbacks", api.list_rollbacks, "viewer"),
        ("GET", "/v1/rollbacks/{id}", api.get_rollback, "viewer"),
        ("POST", "/v1/rollbacks/{id}/ack", api.ack, "operator"),
        ("POST", "/v1/rollbacks/{id}/veto", api.veto, "operator"),
        ("POST", "/v1/rollbacks/{id}/approve", api.approve, "operator"),
        ("POST", "/v1/rollbacks/{id}/retry", api.retry, "operator"),
        ("GET", "/v1/audit", api.audit, "viewer"),
        ("GET", "/v1/freezes", api.list_freezes, "viewer"),
        ("POST", "/v1/services/{service}/freeze", api.freeze, "operator"),
        ("DELETE", "/v1/services/{service}/freeze", api.unfreeze, "operator"),
        ("POST", "/v1/services/{service}/backups", api.take_backup, "deployer"),
        ("GET", "/v1/services/{service}/backups", api.list_backups, "viewer"),
        ("GET", "/v1/whoami", api.whoami, "viewer"),
        ("GET", "/v1/events", events_handler(hub), "viewer"),
        ("POST", "/v1/deployments/{id}/rehearse", api.rehearse, "operator"),
        ("POST", "/v1/alertmanager", api.alertmanager, "deployer"),
    ]
    for method, path, handler, role in routes:
        route = app.router.add_route(method, path, handler)
        api.roles[route] = role
    for method, path, handler in ui.ROUTES:
        app.router.add_route(method, path, handler)  # open: the page holds no data, its calls a token
    return app


class _Api:
    def __init__(
        self, daemon: Daemon, tokens: Tokens, open_endpoints: set[str], documented_open: tuple[str, ...] = ()
    ) -> None:
        self.daemon = daemon
        self.tokens = tokens
        self.open = open_endpoints
        self.roles: dict[Any, Role | None] = {}
        self.throttle = Throttle()
        self.rejections = Rejections(log)
        self.documented_open = documented_open
        self._document: dict[str, Any] | None = None
        self._probe: asyncio.Task[None] | None = None

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            _check_headers(request)
            return await handler(request)
        except RequestError as exc:
            return _error(exc.status, exc.code, str(exc), fields=getattr(exc, "fields", None))
        except StoreError as exc:
            # contention (SQLite "database is locked") or an unreachable PostgreSQL: the client may
            # retry; readyz says so until the store answers again
            self._store_failed(exc)
            message = "the state store is not answering; retry shortly"
            return _error(503, "store_unavailable", message, retry_after=STORE_RETRY_AFTER)
        except UnicodeError:
            # a header or query that was not UTF-8 and was read past the first check
            self.rejections.note("bad_encoding", peer=request.remote or "unknown")
            return _error(400, "bad_request", "headers and query must be UTF-8")
        except web.HTTPRequestEntityTooLarge:
            return _error(400, "too_large", f"request body over {MAX_BODY} bytes")
        except web.HTTPNotFound:
            return _error(404, "not_found", f"no route {request.path}")
        except web.HTTPMethodNotAllowed:
            return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
        except web.HTTPException:
            raise
        except Exception:
            log.exception("api_error", path=request.path)
            return _error(500, "internal", "internal error; see the daemon's log")

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        role = self.roles.get(route)
        name = request.path.strip("/")
        if role is None and (name in self.open or route not in self.roles):
            return await handler(request)
        peer = request.remote or "unknown"
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise RequestError(
                status=401,
                code="unauthorized",
                message="a bearer token is required (Authorization: Bearer TOKEN)",
            )
        principal = self.tokens.check(token)
        if principal is None:
            # the token is checked first, so a valid one is never slowed down by guesses beside it
            now = time.monotonic()
            wait = self.throttle.delay(peer, token, now)
            self.throttle.fail(peer, token, now)
            self.rejections.note("bad_token", peer=peer)
            if wait > 0:
                if not self.throttle.enter():
                    self.rejections.note("throttle_full")
                    raise TooManyRequests("too many failed tokens; slow down")
                try:
                    await asyncio.sleep(wait)  # only this answer waits; everyone else is served
                finally:
                    self.throttle.leave()
            raise RequestError(status=401, code="unauthorized", message="unknown token")
        if not principal.may(role or "admin"):
            raise RequestError(
                status=403,
                code="forbidden",
                message=f"{principal.name} is {principal.role}; this needs {role}",
            )
        request[PRINCIPAL] = principal
        return await handler(request)

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

    # --- deployments ----------------------------------------------------------------------

    async def create_deployment(self, request: web.Request) -> web.Response:
        body = await _body(request, DeploymentBody)
        principal: Principal | None = request.get(PRINCIPAL)
        if body.rehearse and (principal is None or not principal.may("operator")):
            who = f"{principal.name} is {principal.role}" if principal else "anonymous"
            raise RequestError(
                status=403,
                code="forbidden",
                message=f"{who}; rehearse: true runs SQL on the database and needs operator",
            )
        registration = Registration(
            service=body.service,
            image=body.image,
            previous_image=body.previous_image,
            wanted=tuple(
                MigrationRequest(m.id, m.down_sql, None if m.verify_sql is None else tuple(m.verify_sql))
                for m in body.migrations
            ),
            window=parse_duration(body.window) if body.window else None,
            rehearse=body.rehearse,
            idempotency_key=_idempotency_key(request),
        )
        key = registration.idempotency_key
        if key is None or await self.daemon.store.deployment_for_key(key) is None:
            await self.daemon.freezes.check(body.service)  # a replay of one registered before still answers
        if body.backup_id is not None:
            self._backup(body.service, body.backup_id)  # refused before anything is registered
        deployment, registered = await self.daemon.deployments.register(registration, _actor(request))
        if body.backup_id is not None and deployment.facts.backup_id != body.backup_id:
            facts = dataclasses.replace(deployment.facts, backup_id=body.backup_id)
            await self.daemon.store.update_facts(deployment.id, facts)
            deployment = dataclasses.replace(deployment, facts=facts)
        return web.json_response({**self._deployment(deployment), **registered.to_json()}, status=201)

    async def list_deployments(self, request: web.Request) -> web.Response:
        store = self.daemon.store
        return web.json_response({"items": [self._deployment(d) for d in await store.deployments()]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        deployment = await self.daemon.store.deployment(request.match_info["id"])
        if deployment is None:
            raise NotFound(f"no deployment {request.match_info['id']}")
        seen = await self.daemon.watched.seen(deployment, self.daemon.world)  # a closed one as last saved
        return web.json_response(self._deployment(deployment, seen.views))

    async def promote(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        deployment = await self.daemon.operators.promote(request.match_info["id"], _actor(request))
        return web.json_response(self._deployment(deployment))

    async def rehearse(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        report = await self.daemon.operators.rehearse(request.match_info["id"], _actor(request))
        return web.json_response(report)

    async def manual_rollback(self, request: web.Request) -> web.Response:
        body = await _body(request, ReasonBody)
        record = await self.daemon.operators.manual_rollback(
            request.match_info["id"], _actor(request), body.reason
        )
        return web.json_response(_rollback(record), status=202)

    # --- backups -------------------------------------------------------------------------

    def _backup(self, service: str, backup_id: str) -> Backup:
        from watchdogd.rollback.backups import backups_dir, get_backup  # asyncpg only when asked

        config = self.daemon.world.config
        self.daemon.world.service(service)
        try:
            return get_backup(backups_dir(config), service, backup_id)
        except NotFound as exc:
            raise Invalid(str(exc), code="unknown_backup") from None

    async def take_backup(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        service, actor = request.match_info["service"], _actor(request)
        world = self.daemon.world
        world.service(service)
        from watchdogd.rollback.backups import take_backup

        backup = await take_backup(world.config, service, actor, time.time())
        await self.daemon.store.audit(
            actor, "backup", {"service": service, "backup_id": backup.id, "size": backup.size}
        )
        return web.json_response(_backup_json(backup), status=201)

    async def list_backups(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        world = self.daemon.world
        world.service(service)
        from watchdogd.rollback.backups import backups_dir, list_backups

        found = await asyncio.to_thread(list_backups, backups_dir(world.config), service)
        return web.json_response({"items": [_backup_json(b) for b in found]})

    # --- freezes -------------------------------------------------------------------------

    async def list_freezes(self, request: web.Request) -> web.Response:
        return web.json_response({"items": [freeze_json(f) for f in await self.daemon.freezes.list()]})

    async def freeze(self, request: web.Request) -> web.Response:
        body = await _body(request, FreezeBody)
        freeze = await self.daemon.freezes.set(
            request.match_info["service"], body.reason, parse_duration(body.for_), _actor(request)
        )
        return web.json_response(freeze_json(freeze), status=201)

    async def unfreeze(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        lifted = await self.daemon.freezes.lift(request.match_info["service"], _actor(request))
        return web.json_response({"lifted": freeze_json(lifted)})

    # --- rollbacks -----------------------------------------------------------------------

    async def list_rollbacks(self, request: web.Request) -> web.Response:
        records = await self.daemon.store.rollbacks()
        return web.json_response({"items": [_rollback(r) for r in records]})

    async def get_rollback(self, request: web.Request) -> web.Response:
        record = await self.daemon.store.get(request.match_info["id"])
        if record is None:
            raise NotFound(f"no rollback {request.match_info['id']}")
        return web.json_response(_rollback(record))

    async def ack(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        record = await self.daemon.operators.ack(request.match_info["id"], _actor(request))
        return web.json_response(_rollback(record))

    async def veto(self, request: web.Request) -> web.Response:
        body = await _body(request, VetoBody)
        mute = parse_duration(body.mute_for) if body.mute_for else None
        record = await self.daemon.operators.veto(
            request.match_info["id"], _actor(request), body.reason, mute
        )
        return web.json_response(_rollback(record))

    async def approve(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        record = await self.daemon.operators.approve(request.match_info["id"], _actor(request))
        return web.json_response(_rollback(record))

    async def retry(self, request: web.Request) -> web.Response:
        await _body(request, EmptyBody, optional=True)
        record = await self.daemon.operators.retry(request.match_info["id"], _actor(request))
        return web.json_response(_rollback(record))

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
            raw = await request.read()  # kept by the request: _body reads the same bytes
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise too_large
        body: WebhookPayload = await _body(request, WebhookPayload)
        sources = self.daemon.alertmanager(body)
        firing = sum(1 for a in body.alerts if a.status == "firing")
        log.info(
            "alertmanager_notification",
            receiver=body.receiver,
            status=body.status,
            alerts=len(body.alerts),
            firing=firing,
            sources=sources,
            actor=_actor(request),
        )
        return web.json_response({"status": "ok", "alerts": len(body.alerts), "sources": sources})

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
        limit = _count(query, "limit", 1, AUDIT_LIMIT) or AUDIT_LIMIT
        before = _count(query, "before", 1, 2**62)
        entries = await self.daemon.store.audit_entries(
            query.get("deployment"), query.get("actor"), since, limit=limit + 1, before=before
        )
        more = len(entries) > limit
        entries = entries[:limit]
        items = [
            {
                "seq": e.seq,
                "at": _time(e.at),
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

    # --- helpers ---------------------------------------------------------------------------

    def _store_failed(self, exc: StoreError) -> None:
        """readyz says the store fails; a probe clears it once the store answers a read again."""
        health = self.daemon.health
        if health.store_problem:
            return  # already said, by the API or by the daemon's own writes
        health.store_failed(exc)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_store(), name="api-store-probe")

    async def _probe_store(self) -> None:
        while self.daemon.health.store_problem:
            await asyncio.sleep(STORE_RETRY_AFTER)
            try:
                await self.daemon.store.audit_entries(limit=1)
            except StoreError:
                continue
            self.daemon.health.store_recovered()

    async def stop_probe(self, app: web.Application) -> None:
        if self._probe is not None:
            self._probe.cancel()

    def _deployment(self, deployment: Deployment, views: list[RuleView] | None = None) -> dict[str, Any]:
        if views is None:
            views = self.daemon.watched.rule_views(deployment, self.daemon.world)
        return {
            "id": deployment.id,
            "service": deployment.service,
            "image": deployment.image,
            "previous_image": deployment.previous_image,
            "state": deployment.state,
            "started_at": _time(deployment.started_at),
            "window_ends_at": _time(deployment.window_ends_at),
            "finished_at": _time(deployment.finished_at),
            "migrations": [m.id for m in deployment.facts.migrations],
            "backup_id": deployment.facts.backup_id,
            "known_bad": deployment.facts.known_bad,
            "rules": [
                {
                    "name": v.name,
                    "state": v.state.value,
                    "value": jsonable_number(v.value),
                    "since": _time(v.since),
                    "reason": v.reason,
                }
                for v in views
            ],
        }


def _rollback(record: RollbackRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "deployment_id": record.deployment_id,
        "service": record.service,
        "state": record.state,
        "reasons": [r.to_json() for r in record.reasons],
        "proposed_at": _time(record.proposed_at),
        "execute_at": _time(record.execute_at),
        "started_at": _time(record.started_at),
        "finished_at": _time(record.finished_at),
        "error": record.error,
        "steps": [
            {
                "name": s.name,
                "state": s.state,
                "started_at": _time(s.started_at),
                "finished_at": _time(s.finished_at),
                "error": s.error,
                "detail": s.detail,
                "attempts": s.attempts,
            }
            for s in record.steps
        ],
        **_group(record),
    }


def _group(record: RollbackRecord) -> dict[str, Any]:
    """A group's rollback: its members, in order, and which are back (nothing for one service's)."""
    group = group_of_record(record)
    if group is None:
        return {}
    ids = {str(m["service"]): m.get("deployment_id") for m in group.get("members") or ()}
    members = [
        {"service": o.service, "deployment_id": ids.get(o.service), "state": o.state, "why": o.why or None}
        for o in group_outcomes(record)
    ]
    return {"group": {"name": group.get("name"), "members": members}}


async def _body(request: web.Request, model: type[BaseModel], optional: bool = False) -> Any:
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


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: up to 200 visible ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise RequestError(
            status=400, code="bad_request", message="Idempotency-Key: use 1 to 200 visible ASCII characters"
        )
    return key


def _actor(request: web.Request) -> str:
    principal: Principal | None = request.get(PRINCIPAL)
    return principal.name if principal else "anonymous"


def _backup_json(backup: Backup) -> dict[str, Any]:
    return {
        "backup_id": backup.id,
        "service": backup.service,
        "database": backup.database,
        "created_at": _time(backup.created_at),
        "size": backup.size,
        "sha256": backup.sha256,
        "tables": backup.tables,
        "server_version": backup.server_version,
        "by": backup.by,
        "seconds": backup.seconds,
    }


def _time(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _error(
    status: int,
    code: str,
    message: str,
    retry_after: int | None = None,
    fields: dict[str, Any] | None = None,
) -> web.Response:
    """``fields``: what the client acts on besides the words (a freeze's reason and end)."""
    if retry_after is None and status in (429, 503):
        retry_after = 1
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = {"code": code, "message": message, **(fields or {})}
    return web.json_response({"error": body}, status=status, headers=headers)


def _check_headers(request: web.Request) -> None:
    """400 for a header that is not UTF-8: aiohttp hands its bytes on as lone surrogates."""
    for value in request.headers.values():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(
                status=400, code="bad_request", message="every header must be UTF-8 text"
            ) from None


def _count(query: Any, name: str, low: int, high: int) -> int | None:
    """The whole number ``name`` of the query, ``low`` to ``high``; None when not given."""
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise RequestError(status=400, code="bad_request", message=f"{name}: a whole number {low} to {high}")
    return int(raw)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if response.status == 200 and ui.serves(request):
        response.headers.update(ui.HEADERS)  # the operator page: its own script and styles, nothing else


def _dumps(data: Any) -> str:
    return json.dumps(
        data, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)
    )
