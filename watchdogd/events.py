"""The event stream: the daemon's events as server-sent events (``GET /v1/events``).

The hub numbers every event the daemon emits, keeps the last ``buffer`` of
them for clients that reconnect with ``Last-Event-ID``, and hands each event
to every subscriber's own bounded queue. Publishing never waits: a subscriber
whose queue is full (a slow or stuck client) is dropped and its connection
closed, so it costs neither the daemon nor the other clients anything.

A frame is ``id: N``, ``event: KIND`` and ``data: JSON``; a client resuming
from an id the buffer no longer holds (or from a previous run of the daemon)
first gets ``event: reset``: events were lost, re-read the state. Idle
streams carry a ``: ping`` comment every ``heartbeat`` seconds.

Streams are capped, in all (``max_streams``) and per token
(``max_streams_per_token``): each holds a connection and a file descriptor for
as long as the client likes, so without a cap a viewer token alone could take
every descriptor the daemon has. Over a cap the answer is a JSON 429 with
``Retry-After``, at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiohttp import web

from watchdogd.auth import Principal, Rejections
from watchdogd.clock import now as steady

log = structlog.get_logger("watchdogd.events")

EventsHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _principal_key() -> Any:
    """Where a request keeps who made it: aiohttp's typed ``RequestKey`` where it has one (3.13
    and later warn about plain strings), else the plain string."""
    make = getattr(web, "RequestKey", None)
    return make("principal", Principal) if make is not None else "principal"


PRINCIPAL: Any = _principal_key()
"""``request[PRINCIPAL]``: the token's principal, set by the API's auth middleware."""
PING = b": ping\n\n"
RETRY_MS = 2000
"""How long an EventSource waits before reconnecting after the stream ends."""
STREAM_RETRY_AFTER = 30
"""Seconds a client refused a stream (a cap reached) is told to wait before it asks again."""


class Publisher(Protocol):
    """What the hub attaches to: anything with ``listeners`` called as ``(kind, data)``."""

    listeners: list[Callable[[str, dict[str, Any]], None]]


@dataclass(frozen=True)
class Frame:
    """One published event, encoded once and shared by every subscriber."""

    id: int
    kind: str
    data: bytes

    def encode(self) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.kind.encode(), self.data)


@dataclass(eq=False)
class Subscriber:
    """One connected client: its bounded queue and a way to cut it off."""

    limit: int
    close_transport: Callable[[], None] = lambda: None
    pending: deque[Frame] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    reason: str = ""
    owner: str = ""

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame``; False when the queue is full."""
        if len(self.pending) >= self.limit:
            return False
        self.pending.append(frame)
        self.wake.set()
        return True

    def close(self, reason: str, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.pending.clear()
        self.wake.set()
        if abort:
            # A client that stopped reading leaves its writer stuck in drain; only aborting
            # the transport frees it (a graceful close would wait for the peer forever).
            self.close_transport()


@dataclass(frozen=True)
class Replay:
    """What a new subscriber is owed before live events: a reset notice, then buffered frames."""

    reset: dict[str, Any] | None
    frames: tuple[Frame, ...]


class EventHub:
    """Numbers, buffers and fans out the daemon's events; see the module docstring."""

    def __init__(
        self,
        buffer: int = 1000,
        heartbeat: float = 15.0,
        queue_size: int = 256,
        write_timeout: float = 30.0,
        clock: Callable[[], float] = steady,
        max_streams: int = 64,
        max_streams_per_token: int = 8,
        rejections: Rejections | None = None,
    ) -> None:
        if buffer < 1 or queue_size < 1 or max_streams < 1 or max_streams_per_token < 1:
            raise ValueError("buffer, queue_size and the stream caps must be at least 1")
        if heartbeat <= 0 or write_timeout <= 0:
            raise ValueError("heartbeat and write_timeout must be more than 0")
        self.heartbeat = heartbeat
        self.clock = clock
        self.queue_size = queue_size
        self.write_timeout = write_timeout
        """A write that long stuck means the client stopped reading even with no events flowing."""
        self._ids = itertools.count(1)
        self.last_id = 0
        self._buffer: deque[Frame] = deque(maxlen=buffer)
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0
        self._closed = False
        self.max_streams = max_streams
        self.max_streams_per_token = max_streams_per_token
        self.rejections = rejections or Rejections(log)
        self._per_owner: dict[str, int] = {}

    def full(self, owner: str) -> str | None:
        """Why a new stream for ``owner`` is refused, or None when it fits under both caps."""
        if len(self.subscribers) >= self.max_streams:
            return f"{self.max_streams} event streams are open, the most this daemon serves"
        if self._per_owner.get(owner, 0) >= self.max_streams_per_token:
            return f"{self.max_streams_per_token} event streams are open with this token, the most per token"
        return None

    def attach(self, publisher: Publisher) -> None:
        publisher.listeners.append(self.publish)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Called on the event loop for every event; never blocks.

        Events without their own ``at`` (Unix seconds) get the time they were published.
        """
        frame = Frame(next(self._ids), kind, _encode({"at": self.clock(), **data}))
        self.last_id = frame.id
        self._buffer.append(frame)
        for subscriber in list(self.subscribers):
            if not subscriber.offer(frame):
                self.dropped += 1
                self._remove(subscriber)
                subscriber.close(f"queue full ({self.queue_size} events)", abort=True)
                log.warning("events_client_dropped", reason=subscriber.reason, last_id=frame.id)

    def subscribe(
        self,
        last_id: int | None = None,
        close_transport: Callable[[], None] = lambda: None,
        owner: str = "",
    ) -> tuple[Subscriber, Replay]:
        """A new subscriber and what it missed since ``last_id`` (None: nothing, it starts now).

        Taking the replay and registering happen with no await between them, so
        the client sees every id after ``last_id`` exactly once, or a reset.
        """
        subscriber = Subscriber(self.queue_size, close_transport, owner=owner)
        if self._closed:
            subscriber.close("shutting down")
            return subscriber, Replay(None, ())
        self.subscribers.add(subscriber)
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        if last_id is None or last_id == self.last_id:
            return subscriber, Replay(None, ())
        oldest = self._buffer[0].id if self._buffer else self.last_id + 1
        if last_id > self.last_id or last_id + 1 < oldest:
            # Ahead of us: ids from an earlier run of the daemon. Behind the buffer: lost events.
            reset = {"last_event_id": last_id, "oldest": oldest, "latest": self.last_id}
            return subscriber, Replay(reset, tuple(self._buffer))
        return subscriber, Replay(None, tuple(f for f in self._buffer if f.id > last_id))

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._remove(subscriber)
        subscriber.close(subscriber.reason or "gone")

    def buffered(self) -> int:
        return len(self._buffer)

    async def close(self, app: web.Application | None = None) -> None:
        """Ends every stream (the server is stopping); usable as an ``on_shutdown`` hook."""
        self._closed = True
        for subscriber in list(self.subscribers):
            self._remove(subscriber)
            subscriber.close("shutting down")

    def _remove(self, subscriber: Subscriber) -> None:
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        left = self._per_owner.get(subscriber.owner, 0) - 1
        if left > 0:
            self._per_owner[subscriber.owner] = left
        else:
            self._per_owner.pop(subscriber.owner, None)


def events_handler(hub: EventHub) -> EventsHandler:
    """The aiohttp handler of ``GET /v1/events``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        last_id: int | None = None
        if raw is not None and raw.strip():
            try:
                last_id = int(raw.strip())
            except ValueError:
                message = "Last-Event-ID: send an event id this stream gave you"
                return web.json_response({"error": {"code": "bad_request", "message": message}}, status=400)
            if last_id < 0:
                message = "Last-Event-ID: ids are not negative"
                return web.json_response({"error": {"code": "bad_request", "message": message}}, status=400)
        principal = request.get(PRINCIPAL)
        owner = principal.name if principal is not None else ""
        refused = hub.full(owner)
        if refused is not None:
            hub.rejections.note("stream_limit", owner=owner or "anonymous")
            return web.json_response(
                {"error": {"code": "too_many_streams", "message": refused}},
                status=429,
                headers={"Retry-After": str(STREAM_RETRY_AFTER)},
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # proxies must not hold events back
            }
        )
        transport = request.transport
        subscriber, replay = hub.subscribe(
            last_id, transport.abort if transport is not None else lambda: None, owner
        )
        try:
            await response.prepare(request)
            await _stream(hub, response, subscriber, replay)
        except _Stalled:
            hub.dropped += 1
            subscriber.close(f"no write progress in {hub.write_timeout:g}s", abort=True)
            log.warning("events_client_dropped", reason=subscriber.reason)
        except ConnectionError:
            subscriber.close("client gone")
        finally:
            hub.unsubscribe(subscriber)
        return response  # aiohttp ends the stream (write_eof) and copes with a dead connection

    return handler


async def _stream(hub: EventHub, response: web.StreamResponse, sub: Subscriber, replay: Replay) -> None:
    async def write(chunk: bytes) -> None:
        try:
            async with asyncio.timeout(hub.write_timeout):
                await response.write(chunk)
        except TimeoutError:
            raise _Stalled from None

    await write(b"retry: %d\n\n" % RETRY_MS)
    if replay.reset is not None:
        await write(b"event: reset\ndata: %s\n\n" % _encode(replay.reset))
    for frame in replay.frames:
        if sub.closed:
            return
        await write(frame.encode())
    while not sub.closed:
        if not sub.pending:
            sub.wake.clear()
            try:
                async with asyncio.timeout(hub.heartbeat):
                    await sub.wake.wait()
            except TimeoutError:
                await write(PING)
                continue
        chunk = b"".join(frame.encode() for frame in sub.pending)
        sub.pending.clear()
        if chunk:
            await write(chunk)


class _Stalled(Exception):
    """A write to the client made no progress within the hub's ``write_timeout``."""


def install(app: web.Application, publisher: Publisher, hub: EventHub | None = None) -> EventHub:
    """Attaches a hub to ``publisher`` and ends its streams when ``app`` shuts down."""
    hub = hub or EventHub()
    hub.attach(publisher)
    app.on_shutdown.append(hub.close)
    return hub


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(_finite(data), separators=(",", ":"), default=str).encode()


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become strings, as in the rest of the API."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
