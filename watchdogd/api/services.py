"""A service's routes: its deploy freeze (set, lifted, listed) and the database backups
taken before migrating it."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from watchdogd.api.guard import actor
from watchdogd.api.inputs import EmptyBody, FreezeBody, read_body
from watchdogd.api.views import backup_json
from watchdogd.config.types import parse_duration
from watchdogd.daemon import Daemon
from watchdogd.errors import Invalid, NotFound
from watchdogd.watch.freezes import freeze_json

if TYPE_CHECKING:
    from watchdogd.rollback.backups import Backup


def known_backup(daemon: Daemon, service: str, backup_id: str) -> Backup:
    """The backup ``backup_id`` of ``service``; 422 ``unknown_backup`` when there is none."""
    from watchdogd.rollback.backups import backups_dir, get_backup  # asyncpg only when asked

    config = daemon.world.config
    daemon.world.service(service)
    try:
        return get_backup(backups_dir(config), service, backup_id)
    except NotFound as exc:
        raise Invalid(str(exc), code="unknown_backup") from None


class Services:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    # --- freezes -------------------------------------------------------------------------

    async def list_freezes(self, request: web.Request) -> web.Response:
        return web.json_response({"items": [freeze_json(f) for f in await self.daemon.freezes.list()]})

    async def freeze(self, request: web.Request) -> web.Response:
        body = await read_body(request, FreezeBody)
        freeze = await self.daemon.freezes.set(
            request.match_info["service"], body.reason, parse_duration(body.for_), actor(request)
        )
        return web.json_response(freeze_json(freeze), status=201)

    async def unfreeze(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        lifted = await self.daemon.freezes.lift(request.match_info["service"], actor(request))
        return web.json_response({"lifted": freeze_json(lifted)})

    # --- backups -------------------------------------------------------------------------

    async def take_backup(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        service, who = request.match_info["service"], actor(request)
        world = self.daemon.world
        world.service(service)
        from watchdogd.rollback.backups import take_backup

        backup = await take_backup(world.config, service, who, time.time())
        await self.daemon.store.audit(
            who, "backup", {"service": service, "backup_id": backup.id, "size": backup.size}
        )
        return web.json_response(backup_json(backup), status=201)

    async def list_backups(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        world = self.daemon.world
        world.service(service)
        from watchdogd.rollback.backups import backups_dir, list_backups

        found = await asyncio.to_thread(list_backups, backups_dir(world.config), service)
        return web.json_response({"items": [backup_json(b) for b in found]})
