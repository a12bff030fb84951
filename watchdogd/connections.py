"""A bound on the API's connections, and a deadline for a request's headers.

aiohttp closes idle keep-alive connections (``keepalive_timeout``) but has
no deadline for the headers of a request: a socket that sends nothing, or
half a request line, is held for ever, and each holds a file descriptor. Nor
does it bound how many connections it accepts; past the open-file limit
``accept`` fails, and with it ``/healthz`` and the veto.

``ConnectionGuard`` wraps aiohttp's protocol factory (``GuardedSite``) and
its middleware marks when a request is being handled:

- a connection with no request in flight is closed ``header_timeout``
  seconds after it opened, or ``keepalive_timeout`` after its last answer;
- at most ``limit`` connections are held; a new one over the limit closes
  the connection that has been idle longest (no request in flight), or is
  itself closed when every connection is busy. Idle sockets cannot lock
  out an operator: the newest connection wins over the stalest.

Refusals are logged once per kind per interval (``Rejections``).
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watchdogd.auth import Rejections

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ProtocolFactory = Callable[[], asyncio.BaseProtocol]
RESERVED_FDS = 64
"""Descriptors kept back from the API for the store, sources, Docker and logs."""
ACCEPT_BACKLOG = 64
"""The listening socket's backlog. asyncio accepts up to this many connections in one
go before the guard can close any of them, so the budget keeps this many back too."""


def fd_budget(wanted: int, reserved: int = RESERVED_FDS + ACCEPT_BACKLOG) -> int:
    """``wanted``, lowered to what the open-file limit leaves beside the descriptors open now
    (less ``reserved``: the rest of the daemon, and a burst of connections being accepted)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return max(8, min(wanted, soft - in_use - reserved))


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, watched by the guard; everything else is passed on."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.admitted = False
        self.busy = 0
        self.answered = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.guard._admit(self):
            _abort(transport)
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.guard._forget(self)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """See the module docstring."""

    def __init__(
        self,
        limit: int,
        header_timeout: float,
        keepalive_timeout: float,
        rejections: Rejections,
    ) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.rejections = rejections
        self._open: set[_Guarded] = set()
        self._idle: dict[_Guarded, None] = {}
        """Connections with no request in flight, the longest idle first."""
        self._by_handler: dict[Any, _Guarded] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], Any]) -> ProtocolFactory:
        """A protocol factory for ``loop.create_server`` around aiohttp's own."""

        def make() -> asyncio.BaseProtocol:
            inner = factory()
            guarded = _Guarded(self, inner)
            self._by_handler[inner] = guarded
            return guarded

        return make

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy while its request is handled: no deadline, never evicted."""
        guarded = self._by_handler.get(request.protocol)
        if guarded is None:
            return await handler(request)
        guarded.busy += 1
        self._idle.pop(guarded, None)
        _cancel(guarded)
        try:
            return await handler(request)
        finally:
            guarded.busy -= 1
            guarded.answered = True
            if guarded.busy == 0 and guarded in self._open:
                self._idle[guarded] = None
                self._arm(guarded, self.keepalive_timeout + self.header_timeout)

    def _admit(self, guarded: _Guarded) -> bool:
        if len(self._open) >= self.limit:
            if not self._idle:
                self._by_handler.pop(guarded.inner, None)
                self.rejections.note("connection_limit", limit=self.limit)
                return False
            stalest = next(iter(self._idle))
            self.rejections.note("idle_connection_closed", limit=self.limit)
            self._close(stalest)
        self._open.add(guarded)
        self._idle[guarded] = None
        self._arm(guarded, self.header_timeout)
        return True

    def _arm(self, guarded: _Guarded, seconds: float) -> None:
        _cancel(guarded)
        guarded.timer = asyncio.get_running_loop().call_later(seconds, self._expire, guarded)

    def _expire(self, guarded: _Guarded) -> None:
        guarded.timer = None
        if guarded.busy or guarded not in self._open:
            return
        if not guarded.answered:
            self.rejections.note("header_timeout", seconds=self.header_timeout)
        self._close(guarded)

    def _close(self, guarded: _Guarded) -> None:
        """Frees its place at once; the transport reports the loss later."""
        self._forget(guarded)
        if guarded.transport is not None:
            _abort(guarded.transport)

    def _forget(self, guarded: _Guarded) -> None:
        _cancel(guarded)
        self._open.discard(guarded)
        self._idle.pop(guarded, None)
        self._by_handler.pop(guarded.inner, None)


def _cancel(guarded: _Guarded) -> None:
    if guarded.timer is not None:
        guarded.timer.cancel()
        guarded.timer = None


def _abort(transport: asyncio.BaseTransport) -> None:
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, its connections passed through ``guard``.

    ``TCPSite.start`` hands the runner's server straight to the loop; this one
    hands it wrapped. A TLS handshake gets ``header_timeout`` too.
    """

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kwargs: Any
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting a site")
        loop = asyncio.get_running_loop()
        handshake = self.guard.header_timeout if self._ssl_context else None
        listening = await loop.create_server(
            self.guard.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=handshake,
        )
        self._server = listening
        sockets = listening.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
