"""The OpenAPI document against the routes the app really serves."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from watchdogd.api import BODIES, create_app
from watchdogd.auth import Tokens
from watchdogd.config.loader import load_config_text
from watchdogd.daemon import Daemon
from watchdogd.openapi import OPERATIONS, document
from watchdogd.testing import FakeClock, NoDocker, memory_store

CONFIG = """
state: {url: 'sqlite:///:memory:'}
services:
  api: {container: api, rollback: {steps: [container]}}
"""


async def app(open_endpoints: tuple[str, ...] = ("healthz", "readyz", "metrics")) -> web.Application:
    config = load_config_text(CONFIG, "watchdogd.yaml")
    clock = FakeClock()
    daemon = await Daemon.open(
        config, store=await memory_store(clock), clock=clock, polling=False, docker=NoDocker()
    )
    await daemon.close(1)  # the routes are what is looked at
    return create_app(daemon, Tokens.empty(), open_endpoints)


def served(application: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in application.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD to every GET
        info = route.resource.get_info() if route.resource is not None else {}
        out.add((route.method, str(info.get("path") or info.get("formatter"))))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def the_document(application: web.Application) -> dict[str, Any]:
    for route in application.router.routes():
        handler: Any = route.handler
        if getattr(handler, "__name__", "") == "openapi":
            return dict(handler.__self__.document)
    raise AssertionError("no /v1/openapi.json route")


async def test_every_served_route_is_documented_and_every_documented_one_served() -> None:
    application = await app()
    doc = the_document(application)
    assert served(application) == documented(doc)
    assert set(OPERATIONS) == documented(doc)


async def test_roles_and_security_match_the_route_table() -> None:
    application = await app()
    doc = the_document(application)
    roles = application.router.routes()
    api: Any = next(r.handler for r in roles if getattr(r.handler, "__name__", "") == "openapi").__self__
    for route, role in api.roles.items():
        info = route.resource.get_info()
        path = str(info.get("path") or info.get("formatter"))
        op = doc["paths"][path][route.method.lower()]
        assert op["x-role"] == role, path
        if role is None:
            assert op["security"] == [], path
            assert "401" not in op["responses"], path
        else:
            assert op["security"] == [{"bearer": []}], path
            assert {"401", "503"} <= set(op["responses"]), path
        if role == "operator":
            assert "403" in op["responses"], path


async def test_a_closed_metrics_endpoint_is_documented_as_needing_a_token() -> None:
    doc = document(BODIES, ("healthz", "readyz"))
    metrics = doc["paths"]["/metrics"]["get"]
    assert metrics["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(metrics["responses"])
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []


async def test_bodies_come_from_the_models_and_refuse_unknown_fields() -> None:
    doc = document(BODIES, ())
    schemas = doc["components"]["schemas"]
    veto = doc["paths"]["/v1/rollbacks/{id}/veto"]["post"]["requestBody"]
    assert veto["required"] is True
    assert veto["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VetoBody"}
    for name in ("DeploymentBody", "MigrationBody", "ReasonBody", "VetoBody", "EmptyBody"):
        assert schemas[name]["additionalProperties"] is False, name
    approve = doc["paths"]["/v1/rollbacks/{id}/approve"]["post"]["requestBody"]
    assert approve["required"] is False


@pytest.mark.parametrize("code", ["400", "401", "403", "404", "409", "422"])
async def test_errors_share_one_schema(code: str) -> None:
    doc = document(BODIES, ())
    veto = doc["paths"]["/v1/rollbacks/{id}/veto"]["post"]["responses"][code]
    assert veto["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


async def test_every_reference_resolves() -> None:
    doc = document(BODIES, ())
    names = set(doc["components"]["schemas"])

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {str(node["$ref"]).rsplit("/", 1)[-1]} if "$ref" in node else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    assert refs(doc) <= names
    assert doc["openapi"].startswith("3.")
