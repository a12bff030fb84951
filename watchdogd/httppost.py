"""One HTTP request with a body, a timeout and bounded retries, shared by the webhook step and notifications.

Done: a 2xx answer, or one of the statuses the caller expects (a deployer's
API says 204 or 201 and means it). Retried: network errors, timeouts, 5xx and
429, with exponential backoff. Not retried: any other answer; the receiver
refused the body, or answered something else than promised, and sending it
again would not change its mind. A failure's reason quotes the start of the
answer's body (``{"message": "event_type is required"}``), URLs in it masked.

Redirects are not followed: a 3xx is a failed delivery whose reason names the
Location. Following one would send the body (the rollback, its reasons) and
any headers to wherever the receiver, or whoever controls its answers, points;
a webhook is configured with the URL that takes the POST.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Mapping
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


ANSWER_EXCERPT = 200
"""How much of a refusing answer's body a failure quotes."""


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


def excerpt(text: str, url: SecretUrl) -> str:
    """The start of an answer's body on one line, the URL's secrets and other URLs masked."""
    flat = " ".join(text.replace(url.secret(), str(url)).split())
    flat = mask_urls(flat)
    return flat if len(flat) <= ANSWER_EXCERPT else flat[: ANSWER_EXCERPT - 3] + "..."


async def post_json(
    session: aiohttp.ClientSession,
    url: SecretUrl,
    body: bytes,
    *,
    attempt_timeout: float,
    attempts: int,
    backoff: float,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
    expect: Collection[int] = (),
) -> PostResult:
    """Send ``body`` (JSON unless ``headers`` say otherwise) up to ``attempts`` times.

    Each attempt gets ``attempt_timeout`` seconds; between attempts it waits
    ``backoff``, then twice as long, and so on. ``expect``: the statuses that
    mean done (none given: any 2xx).

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
        answer = ""
        try:
            async with (
                asyncio.timeout(attempt_timeout),
                session.request(
                    method, url.secret(), data=body, headers=sent_headers, allow_redirects=False
                ) as response,
            ):
                status = response.status
                location = response.headers.get("Location")
                if not (status in expect if expect else status < 300):
                    raw = await response.content.read(ANSWER_EXCERPT * 4)
                    answer = raw.decode("utf-8", "replace")
        except TimeoutError:
            reason = f"no answer within {attempt_timeout:g}s"
            continue
        except aiohttp.ClientError as exc:
            # aiohttp may quote the URL it was given, password and all
            reason = mask_urls(f"{type(exc).__name__}: {exc}".replace(url.secret(), str(url)))
            continue
        if status in expect if expect else status < 300:
            return PostResult(True, attempt, status, f"answered {status}")
        reason = f"HTTP {status}"
        if expect and status < 300:
            reason += ", expected " + " or ".join(str(s) for s in sorted(expect))
        if 300 <= status < 400:
            reason += redirect_reason(url, location)
        elif answer.strip():
            reason += ": " + excerpt(answer, url)
        if not retryable(status):
            break
    return PostResult(False, attempt, status, reason)
