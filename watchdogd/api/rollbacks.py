"""The rollbacks' routes: reading them, an operator starting one by hand, and the operators'
votes on a proposed or failed one (ack, veto, approve, retry)."""

from __future__ import annotations

from aiohttp import web

from watchdogd.api.guard import actor
from watchdogd.api.inputs import EmptyBody, ReasonBody, VetoBody, read_body
from watchdogd.api.views import rollback_json
from watchdogd.config.types import parse_duration
from watchdogd.daemon import Daemon
from watchdogd.errors import NotFound


class Rollbacks:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def list_rollbacks(self, request: web.Request) -> web.Response:
        records = await self.daemon.store.rollbacks()
        return web.json_response({"items": [rollback_json(r) for r in records]})

    async def get_rollback(self, request: web.Request) -> web.Response:
        record = await self.daemon.store.get(request.match_info["id"])
        if record is None:
            raise NotFound(f"no rollback {request.match_info['id']}")
        return web.json_response(rollback_json(record))

    async def manual_rollback(self, request: web.Request) -> web.Response:
        body = await read_body(request, ReasonBody)
        record = await self.daemon.operators.manual_rollback(
            request.match_info["id"], actor(request), body.reason
        )
        return web.json_response(rollback_json(record), status=202)

    async def ack(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        record = await self.daemon.operators.ack(request.match_info["id"], actor(request))
        return web.json_response(rollback_json(record))

    async def veto(self, request: web.Request) -> web.Response:
        body = await read_body(request, VetoBody)
        mute = parse_duration(body.mute_for) if body.mute_for else None
        record = await self.daemon.operators.veto(request.match_info["id"], actor(request), body.reason, mute)
        return web.json_response(rollback_json(record))

    async def approve(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        record = await self.daemon.operators.approve(request.match_info["id"], actor(request))
        return web.json_response(rollback_json(record))

    async def retry(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        record = await self.daemon.operators.retry(request.match_info["id"], actor(request))
        return web.json_response(rollback_json(record))
