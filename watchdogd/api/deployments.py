"""The deployments' routes: a pipeline registers one, anyone with a token reads them, an
operator promotes one or rehearses its rollback."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from watchdogd.api.guard import actor
from watchdogd.api.inputs import DeploymentBody, EmptyBody, idempotency_key, read_body
from watchdogd.api.services import known_backup
from watchdogd.api.views import deployment_json
from watchdogd.auth import Principal
from watchdogd.config.types import parse_duration
from watchdogd.daemon import Daemon
from watchdogd.errors import NotFound, RequestError
from watchdogd.events import PRINCIPAL
from watchdogd.model import Deployment
from watchdogd.rollback.migrations import MigrationRequest
from watchdogd.watch.deployments import Registration
from watchdogd.watch.live import RuleView


class Deployments:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def create_deployment(self, request: web.Request) -> web.Response:
        body = await read_body(request, DeploymentBody)
        principal: Principal | None = request.get(PRINCIPAL)
        if body.rehearse and (principal is None or not principal.may("operator")):
            who = f"{principal.name} is {principal.role}" if principal else "anonymous"
            raise RequestError(
                status=403,
                code="forbidden",
                message=f"{who}; rehearse: true runs SQL on the database and needs operator",
            )
        registration = Registration(
            service=body.service,
            image=body.image,
            previous_image=body.previous_image,
            wanted=tuple(
                MigrationRequest(m.id, m.down_sql, None if m.verify_sql is None else tuple(m.verify_sql))
                for m in body.migrations
            ),
            window=parse_duration(body.window) if body.window else None,
            rehearse=body.rehearse,
            idempotency_key=idempotency_key(request),
        )
        key = registration.idempotency_key
        if key is None or await self.daemon.store.deployment_for_key(key) is None:
            await self.daemon.freezes.check(body.service)  # a replay of one registered before still answers
        if body.backup_id is not None:
            known_backup(self.daemon, body.service, body.backup_id)  # refused before anything is registered
        deployment, registered = await self.daemon.deployments.register(registration, actor(request))
        if body.backup_id is not None and deployment.facts.backup_id != body.backup_id:
            facts = dataclasses.replace(deployment.facts, backup_id=body.backup_id)
            await self.daemon.store.update_facts(deployment.id, facts)
            deployment = dataclasses.replace(deployment, facts=facts)
        return web.json_response({**self._deployment(deployment), **registered.to_json()}, status=201)

    async def list_deployments(self, request: web.Request) -> web.Response:
        store = self.daemon.store
        return web.json_response({"items": [self._deployment(d) for d in await store.deployments()]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        deployment = await self.daemon.store.deployment(request.match_info["id"])
        if deployment is None:
            raise NotFound(f"no deployment {request.match_info['id']}")
        seen = await self.daemon.watched.seen(deployment, self.daemon.world)  # a closed one as last saved
        return web.json_response(self._deployment(deployment, seen.views))

    async def promote(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        deployment = await self.daemon.operators.promote(request.match_info["id"], actor(request))
        return web.json_response(self._deployment(deployment))

    async def rehearse(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyBody, optional=True)
        report = await self.daemon.operators.rehearse(request.match_info["id"], actor(request))
        return web.json_response(report)

    def _deployment(self, deployment: Deployment, views: list[RuleView] | None = None) -> dict[str, Any]:
        if views is None:
            views = self.daemon.watched.rule_views(deployment, self.daemon.world)
        return deployment_json(deployment, views)
