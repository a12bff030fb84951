"""The HTTP client of the daemon's API, and the errors that end a ``ctl`` command with an exit code.

Redirects are not followed (``Redirected`` names where one pointed), so the
token goes nowhere but ``--url``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any

from watchdogd.errors import CtlError

DEFAULT_URL = "http://127.0.0.1:9464"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0
"""Silence on the event stream this long (four missed heartbeats) means the connection is dead."""


class Refused(CtlError):
    """The API answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}", EXIT_REFUSED)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(CtlError):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot reach watchdogd at {url}: {why}", EXIT_USAGE)
        self.timed_out = why == "timed out"


class Usage(CtlError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class Redirected(CtlError):
    """The API answered 3xx: not followed, so the token goes nowhere but ``--url``."""

    def __init__(self, url: str, status: int, location: str | None) -> None:
        where = f"a redirect to {location[:200]}" if location else "a redirect with no Location"
        super().__init__(
            f"{url} answered {status}, {where}; watchdogd ctl follows no redirect (the token would go"
            " along): set --url or WATCHDOGD_URL to the address watchdogd answers on",
            EXIT_USAGE,
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # returning None leaves the 3xx to the default handler, which raises it as an HTTPError
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Client:
    """A bearer-token JSON client of one daemon's API."""

    url: str
    token: str | None = field(default=None, repr=False)
    token_from: str = "WATCHDOGD_TOKEN"
    """Where the token came from, for the answer to a 401: ``--token`` or ``WATCHDOGD_TOKEN``."""

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> Client:
        """The flags' ``url`` and ``token`` first, then the environment, then the default URL."""
        url_from = "--url" if url else "WATCHDOGD_URL"
        base = (url or os.environ.get("WATCHDOGD_URL") or DEFAULT_URL).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise Usage(f"{url_from} must start with http:// or https:// (got {base!r})")
        if token is not None:
            return cls(base, token.strip() or None, "--token")
        return cls(base, os.environ.get("WATCHDOGD_TOKEN", "").strip() or None)

    def get(self, path: str, **query: str | None) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        return self.call("GET", path + ("?" + urllib.parse.urlencode(params) if params else ""))

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = TIMEOUT) -> Any:
        return self.call("POST", path, body or {}, timeout)

    def call(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT) -> Any:
        """One request; ``timeout`` is how long the answer may keep silent."""
        data = json.dumps(body).encode() if body is not None else None
        request = self._request(method, path, data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            raise Unreachable(self.url, why_unreachable(exc)) from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise CtlError(f"{self.url}{path} did not answer JSON", EXIT_USAGE) from None

    def stream(self, path: str, last_id: str | None) -> Iterator[dict[str, Any]]:
        """Server-sent events from ``path``: dicts with ``id``, ``event`` and ``data``."""
        request = self._request("GET", path)
        request.add_header("Accept", "text/event-stream")
        if last_id is not None:
            request.add_header("Last-Event-ID", last_id)
        try:
            response = _OPENER.open(request, timeout=STREAM_TIMEOUT)
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            raise Unreachable(self.url, why_unreachable(exc)) from None
        with response:
            yield from parse_sse(response)

    def _request(self, method: str, path: str, data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        return request

    def _refused(self, exc: urllib.error.HTTPError) -> CtlError:
        if 300 <= exc.code < 400:
            return Redirected(self.url, exc.code, exc.headers.get("Location"))
        refused = _refused(exc)
        if refused.status != 401:
            return refused
        # say where the token is set, or where this one was read from
        hint = f"check {self.token_from}" if self.token else "pass --token or set WATCHDOGD_TOKEN"
        return Refused(refused.status, refused.code, f"{refused.message}; {hint}")


def parse_sse(lines: Any) -> Iterator[dict[str, Any]]:
    """Events from an iterable of raw SSE lines (bytes); comments and ``retry:`` are skipped."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            continue
        if "data" in fields:
            try:
                data = json.loads(fields["data"])
            except ValueError:
                data = fields["data"]
            yield {"id": fields.get("id"), "event": fields.get("event", "message"), "data": data}
        fields = {}


def _refused(exc: urllib.error.HTTPError) -> Refused:
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return Refused(exc.code, str(error["code"]), " ".join(str(error["message"]).split()))
    except (ValueError, KeyError, TypeError):
        text = " ".join(raw.decode("utf-8", "replace").split())[:200]
        return Refused(exc.code, str(exc.reason).lower().replace(" ", "_"), text or "no details")


def why_unreachable(exc: BaseException) -> str:
    """Why a request got no answer, in a few words."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is `watchdogd run` up?)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason) or type(reason).__name__
