"""The event stream over a real socket: resume, reset, heartbeats, slow clients, memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.testbed.containers import free_port
from watchdogd.events import EventHub, events_handler, install


class FakeDaemon:
    """Just the daemon's listener list, and an ``emit`` as the daemon's own."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, data)


@dataclass
class Served:
    url: str
    hub: EventHub
    daemon: FakeDaemon
    runner: web.AppRunner


@dataclass
class Event:
    id: int | None
    kind: str
    data: Any
    comments: list[str] = field(default_factory=list)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(**hub_args: Any) -> Served:
        app = web.Application()
        daemon = FakeDaemon()
        hub = install(app, daemon, EventHub(**hub_args))
        app.router.add_get("/v1/events", events_handler(hub))
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return Served(f"http://127.0.0.1:{port}/v1/events", hub, daemon, runner)

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_event(response: aiohttp.ClientResponse, timeout: float = 5.0) -> Event:
    """The next event (comment-only blocks come back as kind ``comment``)."""
    fields: dict[str, str] = {}
    comments: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await response.content.readline()
            if not raw:
                return Event(None, "eof", None, comments)
            line = raw.decode().rstrip("\n")
            if line == "":
                if "event" in fields or "data" in fields:
                    event_id = int(fields["id"]) if "id" in fields else None
                    return Event(event_id, fields.get("event", "message"), json.loads(fields["data"]))
                if comments:
                    return Event(None, "comment", None, comments)
                continue  # the retry: block
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[Event]:
    events = []
    while len(events) < count:
        event = await read_event(response)
        if event.kind != "comment":
            events.append(event)
    return events


async def test_events_carry_id_kind_and_json(serve: Serve) -> None:
    served = await serve(clock=lambda: 1700000000.0)
    async with aiohttp.ClientSession() as client, client.get(served.url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        served.daemon.emit("rule_state", {"rule": "error-rate", "to": "pending", "at": 1699999999.5})
        served.daemon.emit("proposal", {"rollback_id": "r1", "nan": float("nan")})
        first, second = await read_events(response, 2)
    assert (first.id, first.kind, first.data["to"]) == (1, "rule_state", "pending")
    assert first.data["at"] == 1699999999.5  # an event's own time wins
    assert (second.id, second.kind) == (2, "proposal")
    assert second.data == {"at": 1700000000.0, "rollback_id": "r1", "nan": "nan"}


async def test_resume_with_last_event_id_replays_what_was_missed(serve: Serve) -> None:
    served = await serve()
    for n in range(1, 6):
        served.daemon.emit("rule_state", {"n": n})
    headers = {"Last-Event-ID": "2"}
    async with aiohttp.ClientSession() as client, client.get(served.url, headers=headers) as response:
        replayed = await read_events(response, 3)
        served.daemon.emit("veto", {"n": 6})
        (live,) = await read_events(response, 1)
    assert [e.id for e in replayed] == [3, 4, 5]
    assert [e.data["n"] for e in replayed] == [3, 4, 5]
    assert (live.id, live.kind) == (6, "veto")


async def test_resume_at_the_latest_id_gets_only_new_events(serve: Serve) -> None:
    served = await serve()
    for n in range(1, 4):
        served.daemon.emit("rule_state", {"n": n})
    async with aiohttp.ClientSession() as client, client.get(served.url + "?last_event_id=3") as response:
        served.daemon.emit("deployment", {"n": 4})
        (event,) = await read_events(response, 1)
    assert event.id == 4


async def test_resume_from_before_the_buffer_gets_a_reset_first(serve: Serve) -> None:
    served = await serve(buffer=5)
    for n in range(1, 21):
        served.daemon.emit("rule_state", {"n": n})
    async with aiohttp.ClientSession() as client, client.get(served.url, headers={"Last-Event-ID": "3"}) as r:
        events = await read_events(r, 6)
    assert events[0].kind == "reset" and events[0].id is None
    assert events[0].data == {"last_event_id": 3, "oldest": 16, "latest": 20}
    assert [e.id for e in events[1:]] == [16, 17, 18, 19, 20]


async def test_resume_from_an_id_this_run_never_gave_resets(serve: Serve) -> None:
    served = await serve()
    served.daemon.emit("rule_state", {"n": 1})
    async with (
        aiohttp.ClientSession() as client,
        client.get(served.url, headers={"Last-Event-ID": "99"}) as r,
    ):
        reset, replayed = await read_events(r, 2)
    assert reset.kind == "reset" and reset.data["latest"] == 1
    assert replayed.id == 1


async def test_a_bad_last_event_id_is_a_400(serve: Serve) -> None:
    served = await serve()
    async with aiohttp.ClientSession() as client, client.get(served.url, headers={"Last-Event-ID": "x"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "bad_request"


async def test_idle_streams_get_heartbeat_comments(serve: Serve) -> None:
    served = await serve(heartbeat=0.2)
    started = time.monotonic()
    async with aiohttp.ClientSession() as client, client.get(served.url) as response:
        first = await read_event(response, timeout=2)
        second = await read_event(response, timeout=2)
    assert first.kind == second.kind == "comment"
    assert first.comments == ["ping"]
    assert time.monotonic() - started < 2


def stuck_client(url: str) -> socket.socket:
    """Sends the request and never reads: its receive window fills and stays full."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    sock.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:  # the headers: it is subscribed
        head += sock.recv(1)
    return sock


async def test_a_stuck_client_is_dropped_and_a_fast_one_keeps_receiving(serve: Serve) -> None:
    served = await serve(queue_size=16)
    hub = served.hub
    stuck = await asyncio.to_thread(stuck_client, served.url)
    payload = "x" * 32_000
    total = 400
    async with aiohttp.ClientSession() as client, client.get(served.url) as response:
        assert len(hub.subscribers) == 2
        received: list[int] = []

        async def read_all() -> None:
            while len(received) < total:
                event = await read_event(response)
                if event.id is not None:
                    received.append(event.id)

        reader = asyncio.create_task(read_all())
        slowest = 0.0
        for n in range(total):
            started = time.perf_counter()
            served.daemon.emit("rule_state", {"n": n, "pad": payload})
            slowest = max(slowest, time.perf_counter() - started)
            if n % 4 == 3:
                await asyncio.sleep(0.002)  # the fast client reads between bursts
        await asyncio.wait_for(reader, 20)
    assert received == list(range(1, total + 1))
    assert hub.dropped == 1
    assert slowest < 0.05, "publishing waited on a client"
    stuck.settimeout(5)
    got = 0
    # its connection ends (what the kernel had already buffered arrives, nothing more)
    with contextlib.suppress(ConnectionResetError):
        while chunk := stuck.recv(65536):
            got += len(chunk)
    stuck.close()
    assert got < total * len(payload) / 2


async def test_memory_stays_bounded_with_a_subscriber_that_never_reads() -> None:
    hub = EventHub(buffer=100, queue_size=50)
    daemon = FakeDaemon()
    hub.attach(daemon)
    closed: list[bool] = []
    subscriber, _ = hub.subscribe(close_transport=lambda: closed.append(True))
    tracemalloc.start()
    try:
        for n in range(2_000):
            daemon.emit("rule_state", {"n": n, "pad": "y" * 1000})
        before, _ = tracemalloc.get_traced_memory()
        for n in range(20_000):
            daemon.emit("rule_state", {"n": n, "pad": "y" * 1000})
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hub.buffered() == 100
    assert subscriber.closed and closed == [True] and not subscriber.pending
    assert hub.subscribers == set()
    assert after - before < 200_000, f"grew by {after - before} bytes"


async def test_shutdown_ends_open_streams(serve: Serve) -> None:
    served = await serve()
    async with aiohttp.ClientSession() as client, client.get(served.url) as response:
        started = time.monotonic()
        await served.runner.cleanup()
        event = await read_event(response, timeout=5)
    assert event.kind == "eof"
    assert time.monotonic() - started < 3
    assert served.hub.subscribers == set()


async def test_streams_over_a_cap_answer_429_at_once(serve: Serve) -> None:
    served = await serve(max_streams=3, max_streams_per_token=2, heartbeat=0.2)
    async with aiohttp.ClientSession() as client:
        held = [await client.get(served.url) for _ in range(2)]  # no principal: one owner
        started = time.monotonic()
        refused = await client.get(served.url)
        assert refused.status == 429 and time.monotonic() - started < 1.0
        body = await refused.json()
        assert body["error"]["code"] == "too_many_streams" and "per token" in body["error"]["message"]
        assert int(refused.headers["Retry-After"]) > 0
        assert len(served.hub.subscribers) == 2
        held[0].close()
        await asyncio.sleep(0.8)  # the next heartbeat finds the client gone
        again = await client.get(served.url)  # a closed stream frees its place
        assert again.status == 200
        again.close()
        for response in held:
            response.close()


def test_the_total_cap_counts_every_owner() -> None:
    hub = EventHub(max_streams=3, max_streams_per_token=2)
    subscribers = [hub.subscribe(owner=owner)[0] for owner in ("alice", "alice", "victor")]
    assert hub.full("alice") is not None and "per token" not in str(hub.full("carol"))
    assert hub.full("carol") is not None  # three in all
    hub.unsubscribe(subscribers[0])
    assert hub.full("carol") is None and hub.full("alice") is None
    hub.unsubscribe(subscribers[0])  # twice is harmless
    assert hub.full("alice") is None and len(hub.subscribers) == 2
