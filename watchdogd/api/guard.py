"""What stands before every route: the middleware turning refusals into JSON errors (never a
500 for anything a client can send), the bearer-token check with its throttle on guessing,
the probe that clears a failed store, and the security headers on every answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from watchdogd import ui
from watchdogd.api.inputs import MAX_BODY
from watchdogd.auth import Principal, Rejections, Role, Throttle, Tokens
from watchdogd.daemon import Daemon
from watchdogd.errors import RequestError, StoreError
from watchdogd.events import PRINCIPAL

log = structlog.get_logger("watchdogd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
THROTTLE = web.AppKey("throttle", Throttle)
STORE_RETRY_AFTER = 5
"""Seconds a client is told to wait (Retry-After) when the state store refuses a request."""
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


class Guard:
    """The ``errors`` and ``auth`` middlewares; ``roles`` maps each route to the role it needs."""

    def __init__(
        self, daemon: Daemon, tokens: Tokens, open_endpoints: set[str], roles: dict[Any, Role | None]
    ) -> None:
        self.daemon = daemon
        self.tokens = tokens
        self.open = open_endpoints
        self.roles = roles
        self.throttle = Throttle()
        self.rejections = Rejections(log)
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


def actor(request: web.Request) -> str:
    """The name of the token the request came with; ``anonymous`` on an open route."""
    principal: Principal | None = request.get(PRINCIPAL)
    return principal.name if principal else "anonymous"


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


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if response.status == 200 and ui.serves(request):
        response.headers.update(ui.HEADERS)  # the operator page: its own script and styles, nothing else
