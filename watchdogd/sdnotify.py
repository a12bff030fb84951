"""The sd_notify protocol: readiness, status and watchdog pings to systemd.

systemd names a datagram socket in ``NOTIFY_SOCKET`` (a path, or an abstract
name when it starts with ``@``) and reads ``KEY=VALUE`` lines from it. Outside
systemd the variable is unset and every call here does nothing, so the daemon
calls these unconditionally. A lost message is never an error: systemd may be
gone already (at shutdown) or the socket full; the daemon runs on either way.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("watchdogd.sdnotify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def socket_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The address to send to, or None when not run by systemd (or by an unknown kind of socket)."""
    name = _environ(environ).get(NOTIFY_SOCKET, "")
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    # unset, or a kind this module does not speak (vsock:...): behave as outside systemd
    return None


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``KEY=VALUE`` each) as one datagram; True when it was sent."""
    address = socket_address(environ)
    if address is None or not lines:
        return False
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # never block the event loop on a full socket buffer: the message is dropped instead
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError as exc:
        log.debug("sd_notify_failed", error=str(exc))
        return False
    return True


def ready(status_text: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Startup is complete (``Type=notify`` units are "active" from here)."""
    lines = ["READY=1"]
    if status_text is not None:
        lines.append(f"STATUS={_one_line(status_text)}")
    return notify(*lines, environ=environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """A free-form line shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}", environ=environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    """A config reload starts; ``ready()`` ends it."""
    monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", environ=environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    """Keep-alive ping; without one every ``WatchdogSec`` systemd restarts the service."""
    return notify("WATCHDOG=1", environ=environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Shutdown has begun."""
    return notify("STOPPING=1", environ=environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec`` in seconds when systemd expects pings from this process, else None.

    ``WATCHDOG_PID``, when set, names the process the pings are expected from: a
    child that inherited the environment must not ping on its parent's behalf.
    """
    env = _environ(environ)
    raw = env.get(WATCHDOG_USEC, "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get(WATCHDOG_PID, "").strip()
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    # a newline would start another KEY=VALUE assignment
    return " ".join(text.splitlines())
