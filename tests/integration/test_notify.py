"""Notifications delivered to real local webhook receivers."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.testbed.containers import free_port
from watchdogd.config.models import WebhookNotify
from watchdogd.notify import EVENT_KINDS, Event, Notifier
from watchdogd.telemetry import Metrics

pytestmark = pytest.mark.integration

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]
AT = 1_767_000_000.25  # 2025-12-29T09:20:00.250000Z


def webhook(url: str, **settings: Any) -> WebhookNotify:
    return WebhookNotify.model_validate({"type": "webhook", "url": url, "timeout": "1s", **settings})


def event(kind: Any = "proposal", n: int = 0, **fields: Any) -> Event:
    return Event(
        kind=kind,
        service="api",
        deployment_id=f"d{n}",
        rollback_id=f"r{n}",
        at=AT,
        summary=f"error rate 20% above 5%\nfor 5m (event {n})",
        fields=fields or {"rule": "error-rate", "value": 0.2, "threshold": 0.05},
    )


class Receiver:
    """Records each POSTed body; answers the given statuses in turn, then 200."""

    def __init__(self, *statuses: int, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses = list(statuses)
        self.delay = delay
        self._changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        self._changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def wait_for(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.bodies) < count:
                self._changed.clear()
                await self._changed.wait()


class Gate(Receiver):
    """Holds every request until released; ``arrived`` is set by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.opened = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()  # kept by aiohttp: still readable if the client gives up meanwhile
        self.arrived.set()
        await self.opened.wait()
        return await super().handle(request)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def gate(fake_server: Server) -> AsyncIterator[tuple[Gate, str]]:
    receiver = Gate()
    url = await fake_server(receiver.handle)
    yield receiver, url
    receiver.opened.set()  # lets the server's shutdown finish at once


def count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("watchdogd_notifications_total", {"outcome": outcome})
    return value or 0.0


async def test_every_kind_is_delivered_with_text_and_fields(fake_server: Server, metrics: Metrics) -> None:
    receiver = Receiver()
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url + "/hook")], metrics, backoff=0.01)
    notifier.start()
    for n, kind in enumerate(EVENT_KINDS):
        notifier.notify(event(kind, n, rule="error-rate", value=0.2, threshold=0.05, execute_at=AT + 60))
    await receiver.wait_for(len(EVENT_KINDS))
    await notifier.close(1.0)

    assert [b["watchdogd"]["event"] for b in receiver.bodies] == list(EVENT_KINDS)
    for n, (kind, body) in enumerate(zip(EVENT_KINDS, receiver.bodies, strict=True)):
        text = body["text"]
        assert "\n" not in text
        dry = "dry run: " if kind.startswith("dry_run") else ""  # said first for a dry run
        assert text == (
            f"{dry}watchdogd: api {kind} (deployment d{n}, rollback r{n}): error rate 20% above 5% "
            f"for 5m (event {n}) [rule=error-rate, value=0.2, threshold=0.05]"
        )
        assert body["watchdogd"] == {
            "event": kind,
            "service": "api",
            "deployment_id": f"d{n}",
            "rollback_id": f"r{n}",
            "at": "2025-12-29T09:20:00.250000Z",
            "rule": "error-rate",
            "value": 0.2,
            "threshold": 0.05,
            "execute_at": "2025-12-29T09:21:00.250000Z",
        }
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert count(metrics, "delivered") == len(EVENT_KINDS)


async def test_json_format_is_the_flat_object_plus_text(fake_server: Server) -> None:
    receiver = Receiver()
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url, format="json")], backoff=0.01)
    notifier.start()
    notifier.notify(event("rollback_failed", error="container did not become healthy", value=math.nan))
    notifier.notify(event("veto", actor="alice", reason="known spike", detail=object()))
    await receiver.wait_for(2)
    await notifier.close(1.0)

    failed, veto = receiver.bodies
    assert "watchdogd" not in failed
    assert failed["event"] == "rollback_failed" and failed["service"] == "api"
    assert failed["error"] == "container did not become healthy"
    assert failed["value"] == "NaN"  # strict JSON: NaN as Prometheus writes it
    assert "error=container did not become healthy" in failed["text"]
    assert veto["actor"] == "alice" and veto["detail"].startswith("<object object")
    assert "actor=alice" in veto["text"] and "reason=known spike" in veto["text"]


async def test_events_filter_keeps_only_the_families_asked_for(fake_server: Server) -> None:
    receiver = Receiver()
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url, events=["rollback", "veto"])], backoff=0.01)
    notifier.start()
    for kind in EVENT_KINDS:
        notifier.notify(event(kind))
    await notifier.close(2.0)
    assert [b["watchdogd"]["event"] for b in receiver.bodies] == [
        "veto",
        "rollback_started",
        "rollback_succeeded",
        "rollback_failed",
        "dry_run",
        "cancelled",
        "retry",
        "freeze",
        "unfreeze",
        "swarm_rolled_back",
    ]


async def test_5xx_and_429_are_retried_then_delivered(fake_server: Server, metrics: Metrics) -> None:
    receiver = Receiver(503, 500, 429)
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url)], metrics, backoff=0.01)
    with capture_logs() as logs:
        notifier.start()
        notifier.notify(event())
        await receiver.wait_for(4)
        await notifier.close(1.0)
    assert len(receiver.bodies) == 4
    assert receiver.bodies[0] == receiver.bodies[-1]
    sent = [e for e in logs if e["event"] == "notification_sent"]
    assert len(sent) == 1 and sent[0]["attempts"] == 4
    assert not [e for e in logs if e["event"] == "notification_failed"]
    assert count(metrics, "delivered") == 1 and count(metrics, "failed") == 0


async def test_a_receiver_always_failing_gets_bounded_attempts_and_one_log(
    fake_server: Server, metrics: Metrics
) -> None:
    receiver = Receiver(*[502] * 10)
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url)], metrics, backoff=0.01)
    with capture_logs() as logs:
        notifier.start()
        notifier.notify(event("rollback_started"))
        await notifier.close(2.0)
    assert len(receiver.bodies) == 5
    failed = [e for e in logs if e["event"] == "notification_failed"]
    assert len(failed) == 1
    assert failed[0]["reason"] == "HTTP 502" and failed[0]["attempts"] == 5
    assert (failed[0]["kind"], failed[0]["service"], failed[0]["deployment"]) == (
        "rollback_started",
        "api",
        "d0",
    )
    assert count(metrics, "failed") == 1


async def test_4xx_is_not_retried(fake_server: Server, metrics: Metrics) -> None:
    receiver = Receiver(400, 400)
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url)], metrics, backoff=0.01)
    with capture_logs() as logs:
        notifier.start()
        notifier.notify(event())
        await notifier.close(1.0)
    assert len(receiver.bodies) == 1
    failed = [e for e in logs if e["event"] == "notification_failed"]
    assert [(e["reason"], e["attempts"]) for e in failed] == [("HTTP 400", 1)]
    assert count(metrics, "failed") == 1


async def test_a_hanging_receiver_delays_neither_notify_nor_another_webhook(
    fake_server: Server, gate: tuple[Gate, str]
) -> None:
    hanging, hanging_url = gate
    healthy = Receiver()
    healthy_url = await fake_server(healthy.handle)
    notifier = Notifier(
        [webhook(hanging_url, timeout="10s"), webhook(healthy_url)], backoff=0.01, queue_size=100
    )
    notifier.start()
    notifier.notify(event(n=0))
    async with asyncio.timeout(1):
        await hanging.arrived.wait()

    slowest = 0.0
    for n in range(1, 50):
        started = time.perf_counter()
        notifier.notify(event(n=n))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.01
    started = time.perf_counter()
    await healthy.wait_for(50, timeout=1.0)
    assert time.perf_counter() - started < 1.0
    assert [b["watchdogd"]["deployment_id"] for b in healthy.bodies] == [f"d{n}" for n in range(50)]

    with capture_logs() as logs:
        started = time.perf_counter()
        await notifier.close(0.2)
        assert time.perf_counter() - started < 1.0
    undelivered = [e for e in logs if e["event"] == "notifications_undelivered"]
    assert [(e["webhook"], e["count"]) for e in undelivered] == [(hanging_url, 50)]
    assert hanging.bodies == []


async def test_a_full_queue_drops_the_oldest(gate: tuple[Gate, str], metrics: Metrics) -> None:
    receiver, url = gate
    notifier = Notifier([webhook(url, timeout="5s")], metrics, backoff=0.01, queue_size=3)
    notifier.start()
    notifier.notify(event(n=0))
    async with asyncio.timeout(1):
        await receiver.arrived.wait()  # d0 is in flight; the queue is empty
    with capture_logs() as logs:
        for n in range(1, 6):
            notifier.notify(event(n=n))
    dropped = [e for e in logs if e["event"] == "notification_dropped"]
    assert [(e["deployment"], e["reason"], e["dropped"]) for e in dropped] == [
        ("d1", "queue full (3)", 1),
        ("d2", "queue full (3)", 2),
    ]
    assert count(metrics, "dropped") == 2

    receiver.opened.set()
    await receiver.wait_for(4)
    await notifier.close(1.0)
    assert [b["watchdogd"]["deployment_id"] for b in receiver.bodies] == ["d0", "d3", "d4", "d5"]
    assert count(metrics, "delivered") == 4


async def test_close_drains_the_queue_then_refuses_more(fake_server: Server, metrics: Metrics) -> None:
    receiver = Receiver(delay=0.02)
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url)], metrics, backoff=0.01)
    notifier.start()
    for n in range(10):
        notifier.notify(event(n=n))
    with capture_logs() as logs:
        await notifier.close(5.0)
        notifier.notify(event(n=10))
    assert [b["watchdogd"]["deployment_id"] for b in receiver.bodies] == [f"d{n}" for n in range(10)]
    assert count(metrics, "delivered") == 10
    assert not [e for e in logs if e["event"] == "notifications_undelivered"]
    dropped = [e for e in logs if e["event"] == "notification_dropped"]
    assert [(e["deployment"], e["reason"]) for e in dropped] == [("d10", "notifier closed")]


async def test_secrets_in_the_url_are_never_logged(fake_server: Server) -> None:
    receiver = Receiver(*[500] * 10)
    base = await fake_server(receiver.handle)
    secret_url = base.replace("http://", "http://watchdog:s3cret-pw@") + "/hook?token=tok-123"
    dead_url = f"http://watchdog:s3cret-pw@127.0.0.1:{free_port()}/hook?token=tok-123"
    notifier = Notifier([webhook(secret_url), webhook(dead_url)], backoff=0.01)
    with capture_logs() as logs:
        notifier.start()
        notifier.notify(event())
        await notifier.close(2.0)
    assert len(receiver.bodies) == 5
    assert receiver.headers[0]["Authorization"].startswith("Basic ")  # the real URL was used

    failed = [e for e in logs if e["event"] == "notification_failed"]
    assert len(failed) == 2
    assert {e["webhook"] for e in failed} == {
        base.replace("http://", "http://watchdog:***@") + "/hook?token=***",
        dead_url.replace("s3cret-pw", "***").replace("tok-123", "***"),
    }
    assert "s3cret-pw" not in repr(logs) and "tok-123" not in repr(logs)


class Redirect:
    """Answers every POST with ``status`` and a Location on ``target``, records what it saw."""

    def __init__(self, status: int, target: str) -> None:
        self.status = status
        self.target = target
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        return web.Response(status=self.status, headers={"Location": self.target + "/stolen?token=abc"})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_failure_and_is_not_followed(
    fake_server: Server, metrics: Metrics, status: int
) -> None:
    elsewhere = Receiver()
    other = await fake_server(elsewhere.handle)
    redirect = Redirect(status, other)
    url = await fake_server(redirect.handle)
    notifier = Notifier([webhook(url + "/hook")], metrics, backoff=0.01)
    with capture_logs() as logs:
        notifier.start()
        notifier.notify(event())
        await notifier.close(2.0)
    assert elsewhere.bodies == []
    assert redirect.calls == 1  # a redirect is an answer: asking again would not change it
    failed = [e for e in logs if e["event"] == "notification_failed"]
    assert [e["attempts"] for e in failed] == [1]
    assert failed[0]["reason"] == (
        f"HTTP {status} redirect to {other}/stolen?token=***, not followed: configure the final URL"
    )
    assert count(metrics, "failed") == 1 and count(metrics, "delivered") == 0


async def test_slack_text_is_escaped_so_it_pings_nobody_and_links_nowhere(fake_server: Server) -> None:
    receiver = Receiver()
    url = await fake_server(receiver.handle)
    notifier = Notifier([webhook(url), webhook(url, format="json")], backoff=0.01)
    notifier.start()
    notifier.notify(
        Event(
            kind="proposal",
            service="api",
            deployment_id="d1",
            at=AT,
            summary="<!channel> deploy of <@U123> & <https://evil.example|click here>",
            fields={"reason": "value > 5 && <!here>", "image": "app:<!everyone>"},
        )
    )
    await receiver.wait_for(2)
    await notifier.close(1.0)
    slack = next(b for b in receiver.bodies if "watchdogd" in b)
    generic = next(b for b in receiver.bodies if "watchdogd" not in b)
    assert slack["text"] == (
        "watchdogd: api proposal (deployment d1): &lt;!channel&gt; deploy of &lt;@U123&gt; &amp; "
        "&lt;https://evil.example|click here&gt; [reason=value &gt; 5 &amp;&amp; &lt;!here&gt;, "
        "image=app:&lt;!everyone&gt;]"
    )
    assert "<" not in slack["text"] and ">" not in slack["text"]
    # the structured fields and the generic JSON format carry the exact strings
    assert slack["watchdogd"]["reason"] == "value > 5 && <!here>"
    assert generic["text"].startswith("watchdogd: api proposal (deployment d1): <!channel> deploy of <@U123>")
