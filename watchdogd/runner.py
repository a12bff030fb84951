"""``watchdogd run``: the daemon and its API in one process, until a signal stops it.

SIGTERM and SIGINT stop it cleanly within a deadline (a running rollback step
finishes or stays journaled for the next start). SIGHUP reloads the config:
an invalid new config is logged and counted, and the running one stays.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
from aiohttp import web

from watchdogd.api import create_app
from watchdogd.auth import Tokens
from watchdogd.config import load_config
from watchdogd.config.models import Config
from watchdogd.daemon import Daemon
from watchdogd.errors import ConfigError

log = structlog.get_logger("watchdogd")

STOP_DEADLINE = 30.0


async def serve(config: Config, config_path: Path) -> int:
    tokens = Tokens.load(config.server.tokens_file) if config.server.tokens_file else Tokens.empty()
    daemon = Daemon(config)
    host, _, port = config.server.listen.rpartition(":")
    app = create_app(daemon, tokens, config.server.open_endpoints)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ssl_context = None
    if config.server.tls is not None:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.server.tls.cert, config.server.tls.key)
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_context)
    await site.start()
    log.info("listening", address=config.server.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(daemon, config_path)))
    try:
        await daemon.start()
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()
        await daemon.stop(STOP_DEADLINE)
    return 0


async def _reload(daemon: Daemon, path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        daemon.refuse_reload([str(p) for p in exc.problems])
        return
    await daemon.reload(config)
