"""One JSON POST with a timeout and bounded retries, shared by the webhook step and notifications.

Retried: network errors, timeouts, 5xx and 429, with exponential backoff.
Not retried: any other answer of 300 or more; the receiver refused the body
and sending it again would not change its mind.

Redirects are not followed: a 3xx is a failed delivery whose reason names the
Location. Following one would send the body (the rollback, its reasons) and
any headers to wherever the receiver, or whoever controls its answers, points;
a webhook is configured with the URL that takes the POST.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from watchdogd.config.types import SecretUrl, redact_url

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


@dataclass(frozen=True, slots=True)
class PostResult:
    """How a POST ended: ``ok`` with the status, or the last reason it failed."""

    ok: bool
    attempts: int
    status: int | None
    reason: str
    """``HTTP 503``, ``no answer within 2s``, ``ClientConnectorError: ...``; URLs in it masked."""


def retryable(status: int) -> bool:
    """Whether an HTTP status is worth asking again: the receiver is down or busy."""
    return status >= 500 or status == 429


def redirect_reason(url: SecretUrl, location: str | None) -> str:
    """`` redirect to URL, not followed: ...`` for a 3xx answer; the Location masked and cut short."""
    if not location:
        return " redirect with no Location, not followed: configure the final URL"
    target = redact_url(urljoin(url.secret(), location.strip()))
    if len(target) > 200:
        target = target[:197] + "..."
    return f" redirect to {target}, not followed: configure the final URL"


def mask_urls(text: str) -> str:
    """``text`` with the password and query values of every URL in it masked."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


async def post_json(
    session: aiohttp.ClientSession,
    url: SecretUrl,
    body: bytes,
    *,
    attempt_timeout: float,
    attempts: int,
    backoff: float,
    headers: Mapping[str, str] | None = None,
) -> PostResult:
    """POST ``body`` (JSON) up to ``attempts`` times, each within ``attempt_timeout`` seconds.

    Waits ``backoff``, then twice as long, and so on, between attempts.

    Never raises for a failed delivery; cancellation propagates.
    """
    sent_headers = {"Content-Type": "application/json", **(headers or {})}
    reason = "not attempted"
    status: int | None = None
    attempt = 0
    for attempt in range(1, max(1, attempts) + 1):
        if attempt > 1:
            await asyncio.sleep(backoff * 2 ** (attempt - 2))
        status = None
        location: str | None = None
        try:
            async with (
                asyncio.timeout(attempt_timeout),
                session.post(
                    url.secret(), data=body, headers=sent_headers, allow_redirects=False
                ) as response,
            ):
                status = response.status
                location = response.headers.get("Location")
        except TimeoutError:
            reason = f"no answer within {attempt_timeout:g}s"
            continue
        except aiohttp.ClientError as exc:
            # aiohttp may quote the URL it was given, password and all
            reason = mask_urls(f"{type(exc).__name__}: {exc}".replace(url.secret(), str(url)))
            continue
        if status < 300:
            return PostResult(True, attempt, status, f"answered {status}")
        reason = f"HTTP {status}"
        if 300 <= status < 400:
            reason += redirect_reason(url, location)
        if not retryable(status):
            break
    return PostResult(False, attempt, status, reason)
