"""``watchdogd run``: the daemon and its API in one process, until a signal stops it.

SIGTERM and SIGINT stop it cleanly within a deadline (a running rollback step
finishes or stays journaled for the next start). SIGHUP reloads the config:
an invalid new config is logged and counted, and the running one stays.

Under systemd (``Type=notify``) it reports readiness, status, reloads and
shutdown, and pings the watchdog when ``WatchdogSec`` is set.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from watchdogd import sdnotify
from watchdogd.api import create_app
from watchdogd.auth import Rejections, Tokens
from watchdogd.config import load_config
from watchdogd.config.models import Config
from watchdogd.connections import ACCEPT_BACKLOG, ConnectionGuard, GuardedSite, fd_budget
from watchdogd.daemon import Daemon
from watchdogd.errors import ConfigError, ConfigProblem

log = structlog.get_logger("watchdogd")

STOP_DEADLINE = 30.0


async def serve(config: Config, config_path: Path) -> int:
    """Run until SIGTERM or SIGINT; ConfigError for what stops it from starting.

    The tokens and the TLS files are read before anything starts; a port that
    cannot be bound is found after the daemon opened, which is then closed again.
    """
    tokens = Tokens.load(config.server.tokens_file) if config.server.tokens_file else Tokens.empty()
    ssl_context = _tls_context(config, config_path)
    daemon = await Daemon.open(config)
    host, _, port = config.server.listen.rpartition(":")
    server = config.server
    rejections = Rejections(log)
    guard = ConnectionGuard(
        fd_budget(server.max_connections),
        server.header_timeout,
        server.keepalive_timeout,
        rejections,
    )
    app = create_app(daemon, tokens, server.open_endpoints, outer=(guard.middleware,))
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=server.keepalive_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_when_out_of_files(rejections))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: daemon.supervisor.job("reload", _reload(daemon, config_path), critical=True)
    )
    watchdog: asyncio.Task[None] | None = None
    try:
        await runner.setup()
        site = GuardedSite(
            runner, host.strip("[]"), int(port), guard, ssl_context=ssl_context, backlog=ACCEPT_BACKLOG
        )
        try:
            await site.start()
        except OSError as exc:
            # a port in use, a privileged port, an address this host does not have
            why = f"cannot listen on {config.server.listen}: {_reason(exc)}"
            raise ConfigError([ConfigProblem(str(config_path), None, "server.listen", why)]) from exc
        log.info("listening", address=config.server.listen, max_connections=guard.limit)
        sdnotify.ready(_status(daemon))
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            watchdog = asyncio.create_task(_ping_watchdog(daemon, interval), name="sd-watchdog")
        await stop.wait()
    finally:
        log.info("stopping")
        sdnotify.stopping()
        if watchdog is not None:
            watchdog.cancel()
        await runner.cleanup()
        await daemon.close(STOP_DEADLINE)
    return 0


def _tls_context(config: Config, config_path: Path) -> ssl.SSLContext | None:
    tls = config.server.tls
    if tls is None:
        return None
    for name, path in (("cert", tls.cert), ("key", tls.key)):
        try:
            path.open("rb").close()
        except OSError as exc:
            why = f"cannot read {path}: {_reason(exc)}"
            raise ConfigError([ConfigProblem(str(config_path), None, f"server.tls.{name}", why)]) from exc
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except OSError as exc:  # ssl.SSLError too: not PEM, or a key that is not the certificate's
        why = f"cannot use {tls.cert} with {tls.key}: {_reason(exc)}"
        raise ConfigError([ConfigProblem(str(config_path), None, "server.tls", why)]) from exc
    return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        # OpenSSL names no reason for a file that is not PEM at all
        return exc.reason.lower().replace("_", " ") if exc.reason else "not a PEM certificate and key"
    if exc.errno is not None and exc.errno in errno.errorcode and not isinstance(exc, socket.gaierror):
        text = os.strerror(exc.errno)  # asyncio's bind error quotes the address before it
    else:
        text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


async def _reload(daemon: Daemon, path: Path) -> None:
    sdnotify.reloading()
    try:
        config = load_config(path)
    except ConfigError as exc:
        daemon.refuse_reload([str(p) for p in exc.problems])
        return
    else:
        await daemon.reload(config)
    finally:
        # systemd holds the unit in "reloading" until READY=1, refused or not
        sdnotify.ready(_status(daemon))


def _status(daemon: Daemon) -> str:
    """The line ``systemctl status`` shows."""
    services, open_deployments = len(daemon.config.services), len(daemon.watched)
    return f"watching {services} services, {open_deployments} open deployments"


async def _ping_watchdog(daemon: Daemon, interval: float) -> None:
    """WATCHDOG=1 at half of ``WatchdogSec``.

    The pings run on the event loop itself, so a loop that blocks or wedges stops
    them, and systemd restarts the service. The status line rides along when it changed.
    """
    log.info("systemd_watchdog", interval=interval)
    shown = _status(daemon)
    while True:
        current = _status(daemon)
        if current != shown:
            sdnotify.status(current)
            shown = current
        sdnotify.watchdog()
        await asyncio.sleep(interval / 2)


def _quiet_when_out_of_files(
    rejections: Rejections,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio's handler logs a traceback each time ``accept()`` finds no descriptor left
    (and retries every second): under a flood that is megabytes of log. Those become one
    ``api_refused`` line per interval; anything else goes to asyncio's own handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            rejections.note("out_of_descriptors")
            return
        loop.default_exception_handler(context)

    return handle
