"""``watchdogd run`` guarding real deploys: the Docker engine, PostgreSQL, a real app.

v1 runs with its schema; v2 is deployed with seed 000's product-import
migration and answers 20% errors. Windows are seconds long so that each
story takes well under a minute.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import VIEWER_TOKEN, Receiver, Watchdogd
from tests.testbed.containers import AppContainer, ContainerRegistry, free_port
from tests.testbed.images import APP_V2, AppBehaviour
from watchdogd.demo.seed000 import (
    BASE_SCHEMA,
    MIGRATION_ID,
    SEED_ROLLBACK,
    SEED_VERIFY,
    UP_MIGRATION,
    snapshot,
)

pytestmark = pytest.mark.integration


def config_for(
    name: str, port: int, dsn: str, mode: str = "auto", grace: str = "2s", window: str = "2m"
) -> str:
    return f"""
defaults: {{interval: 1s, window: {window}, grace: {grace}, mode: {mode}}}
sources:
  app: {{type: scrape, url: "http://127.0.0.1:{port}/cgi-bin/metrics", timeout: 2s}}
  health: {{type: http, url: "http://127.0.0.1:{port}/cgi-bin/health", timeout: 2s}}
  logs: {{type: docker_logs, container: {name}}}
services:
  api:
    container: {name}
    health: health
    database: {{dsn: "{dsn}", lock_timeout: 2s, lock_wait: 5s, destructive: auto, sql_from_api: true,
                allow_superuser: true}}
    rollback:
      steps: [container, sql, verify]
      container: {{stop_timeout: 3s, healthy_timeout: 20s, settle: 500ms}}
      verify: {{timeout: 30s}}
    rules:
      - name: error-rate
        source: app
        ratio: {{numerator: 'http_requests_total{{code=~"5.."}}', denominator: http_requests_total, over: 5s}}
        condition: "> 0.05"
        for: 10s
        action: rollback
      - name: prisma-errors
        source: logs
        pattern: 'PrismaClient\\w*Error'
        condition: ">= 1"
        over: 5s
        immediate: true
        action: rollback
"""


class Story:
    """v1 running with its schema, then v2 deployed over it with the migration."""

    def __init__(self, registry: ContainerRegistry, dsn: str) -> None:
        self.registry = registry
        self.dsn = dsn
        self.name = registry.name("api")
        self.port = free_port()
        self.v1: AppContainer | None = None

    async def start_v1(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(BASE_SCHEMA)
            before = await snapshot(conn)
        finally:
            await conn.close()
        self.v1 = self.registry.run_app("v1", AppBehaviour(error_ratio=0.0), name=self.name, port=self.port)
        return before

    async def deploy_v2(self, behaviour: AppBehaviour) -> AppContainer:
        assert self.v1 is not None
        self.v1.container.remove(force=True)
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(UP_MIGRATION)
        finally:
            await conn.close()
        return self.registry.run_app("v2", behaviour, name=self.name, port=self.port)

    def register(self, wd: Watchdogd) -> dict[str, Any]:
        status, body = wd.post(
            "/v1/deployments",
            {
                "service": "api",
                "image": APP_V2,
                "migrations": [
                    {"id": MIGRATION_ID, "down_sql": SEED_ROLLBACK, "verify_sql": list(SEED_VERIFY)}
                ],
            },
        )
        assert status == 201, body
        return dict(body)

    def running_image(self) -> str:
        container = self.registry.client.containers.get(self.name)
        return str(container.image.tags[0] if container.image.tags else container.image.id)

    async def schema(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await snapshot(conn)
        finally:
            await conn.close()

    async def assert_rolled_back_once(self, before: dict[str, Any]) -> None:
        """v1 running once under the name, one bad container kept aside, one ledger row, the old schema."""
        assert await self.ledger() == [("api", MIGRATION_ID)]
        assert await self.schema() == before
        assert "v1" in self.running_image()
        containers = self.registry.client.containers
        named = containers.list(all=True, filters={"name": f"^/{self.name}$"})
        assert len(named) == 1 and named[0].status == "running"
        kept = containers.list(all=True, filters={"name": f"^/{self.name}-failed-"})
        assert len(kept) == 1, [c.name for c in kept]

    async def ledger(self) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT service, migration_id FROM watchdogd.rollback_ledger")
            return [tuple(r) for r in rows]
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()


def rollbacks(wd: Watchdogd) -> list[dict[str, Any]]:
    status, body = wd.get("/v1/rollbacks")
    assert status == 200, body
    return list(body["items"])


def first_rollback_in(wd: Watchdogd, states: set[str], timeout: float) -> dict[str, Any]:
    found: Callable[[], Any] = lambda: next((r for r in rollbacks(wd) if r["state"] in states), None)  # noqa: E731
    return dict(wd.wait_for(f"a rollback in {states}", found, timeout))


async def test_bad_deploy_is_rolled_back_container_and_sql(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    before = await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn))
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    deployment = story.register(wd)
    assert deployment["service"] == "api" and deployment["state"] == "watching"
    assert deployment["migrations"] == [MIGRATION_ID]

    pending = first_rollback_in(wd, {"pending", "executing", "succeeded"}, timeout=40)
    assert pending["reasons"][0]["rule"] == "error-rate"
    assert pending["reasons"][0]["value"] > 0.05
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{wd.log()}"
    assert [s["name"] for s in done["steps"]] == ["container", "sql", "verify"]

    assert "v1" in story.running_image()
    assert await story.schema() == before
    assert await story.ledger() == [("api", MIGRATION_ID)]
    assert wd.metric("watchdogd_rollbacks_total", service="api", outcome="succeeded") == 1.0
    status, deployments = wd.get(f"/v1/deployments/{done['deployment_id']}")
    assert deployments["state"] == "rolled_back"

    status, audit = wd.get(f"/v1/audit?deployment={done['deployment_id']}", token=VIEWER_TOKEN)
    assert status == 200
    actions = [e["action"] for e in audit["items"]]
    assert "proposed" in actions and "rollback_started" in actions and "rollback_succeeded" in actions
    proposed = next(e for e in audit["items"] if e["action"] == "proposed")
    fired = proposed["detail"]["reasons"][0]
    assert fired["rule"] == "error-rate" and fired["threshold"] == 0.05 and fired["value"] > 0.05
    assert wd.stop() == 0


async def test_veto_during_grace_touches_nothing_and_mutes(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn, grace="30s"))
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    story.register(wd)
    proposal = first_rollback_in(wd, {"pending"}, timeout=40)
    status, body = wd.post(
        f"/v1/rollbacks/{proposal['id']}/veto", {"reason": "known noisy client", "mute_for": "10m"}
    )
    assert status == 200, body
    assert body["state"] == "vetoed"
    again, _ = wd.post(f"/v1/rollbacks/{proposal['id']}/approve")
    assert again == 409
    await asyncio.sleep(3)
    assert "v2" in story.running_image()
    assert await story.ledger() == []
    status, audit = wd.get("/v1/audit?actor=alice")
    veto = next(e for e in audit["items"] if e["action"] == "veto")
    assert veto["detail"]["reason"] == "known noisy client"
    assert veto["detail"]["muted"] == ["error-rate"]
    assert wd.stop() == 0


async def test_dry_run_proposes_and_touches_nothing(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str, receiver: Receiver
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    config = config_for(story.name, story.port, pg_dsn, mode="dry-run", grace="1s")
    wd: Watchdogd = watchdogd(
        f"notify:\n  - {{type: webhook, url: '{receiver.url}', format: slack}}\n" + config
    )
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    story.register(wd)
    done = first_rollback_in(wd, {"dry_run"}, timeout=40)
    assert all(s["state"] == "pending" for s in done["steps"])
    assert "v2" in story.running_image()
    assert await story.ledger() == []

    def kinds() -> list[str]:
        return [b["watchdogd"]["event"] for b in receiver.bodies]

    wd.wait_for(
        "the proposal and the dry run notified", lambda: {"dry_run_proposal", "dry_run"} <= set(kinds()), 10
    )
    assert not {"proposal", "rollback_started"} & set(kinds())
    proposal = next(b for b in receiver.bodies if b["watchdogd"]["event"] == "dry_run_proposal")
    assert "error-rate" in proposal["text"]
    assert all(
        b["text"].startswith("dry run: ") for b in receiver.bodies if "dry_run" in b["watchdogd"]["event"]
    )
    _, audit = wd.get(f"/v1/audit?deployment={done['deployment_id']}")
    would = next(e for e in audit["items"] if e["action"] == "dry_run")
    assert any("container" in line for line in would["detail"]["would_run"])
    assert wd.stop() == 0


async def test_immediate_log_rule_rolls_back_without_grace(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn, grace="1h"))
    wd.start()
    behaviour = AppBehaviour(
        error_ratio=0.0, log_line="PrismaClientKnownRequestError: P2022 column does not exist", log_every=1.0
    )
    # registered before the swap: v2 logs its error at once, and a deploy noticed from Docker
    # before its registration arrives would start rolling back without the migration
    story.register(wd)
    await story.deploy_v2(behaviour)
    done = first_rollback_in(wd, {"succeeded", "failed"}, timeout=60)
    assert done["state"] == "succeeded", f"{done['error']}\n{wd.log()}"
    assert done["reasons"][0]["rule"] == "prisma-errors"
    assert "v1" in story.running_image()
    assert await story.ledger() == [("api", MIGRATION_ID)]
    assert wd.stop() == 0


async def test_healthy_deploy_is_promoted_when_the_window_ends(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn, window="12s"))
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.0, log_line=""))
    deployment = story.register(wd)

    def promoted() -> bool:
        return wd.get(f"/v1/deployments/{deployment['id']}")[1]["state"] == "promoted"

    wd.wait_for("promotion", promoted, timeout=40)
    assert rollbacks(wd) == []
    assert "v2" in story.running_image()
    assert wd.stop() == 0


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_restart_while_pending_fires_at_the_original_time(
    store: str, watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    config = config_for(story.name, story.port, pg_dsn, mode="dry-run", grace="0").replace(
        "for: 10s", "for: 20s"
    )
    wd: Watchdogd = watchdogd(config)
    if store == "postgresql":
        wd.state_url = pg_dsn
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    deployment = story.register(wd)

    def pending_since() -> float | None:
        rules = wd.get(f"/v1/deployments/{deployment['id']}")[1]["rules"]
        rule = next(r for r in rules if r["name"] == "error-rate")
        return time.time() if rule["state"] == "pending" else None

    wd.wait_for("error-rate pending", pending_since, timeout=30)
    _, body = wd.get(f"/v1/deployments/{deployment['id']}")
    since = next(r for r in body["rules"] if r["name"] == "error-rate")["since"]
    wd.kill()
    wd.start()
    done = first_rollback_in(wd, {"dry_run"}, timeout=60)
    proposed = time.mktime(time.strptime(done["proposed_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    pending = time.mktime(time.strptime(since[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    # fired about 20s after the rule went pending, not 20s after the restart
    assert 15 <= proposed - pending <= 28, (since, done["proposed_at"])
    assert wd.stop() == 0


async def test_api_refuses_without_a_valid_token(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn))
    wd.start()
    assert wd.get("/v1/deployments", token=None)[0] == 401
    assert wd.get("/v1/deployments", token="not-a-token-at-all")[0] == 401
    assert wd.post("/v1/deployments", {"service": "api"}, token=VIEWER_TOKEN)[0] == 403
    status, body = wd.post("/v1/deployments", {"service": "nope"})
    assert status == 422 and body["error"]["code"] == "invalid"
    status, body = wd.post("/v1/deployments", {"service": "api", "colour": "red"})
    assert status == 422 and "unknown field" in body["error"]["message"]
    assert wd.get("/v1/rollbacks/nope")[0] == 404
    assert wd.get("/healthz", token=None) == (200, {"status": "ok"})
    assert wd.stop() == 0


async def test_prometheus_down_for_the_whole_window_never_rolls_back(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    down = free_port()  # a Prometheus that is not running
    config = f"""
defaults: {{interval: 1s, window: 10s, grace: 1s}}
sources:
  prom: {{type: prometheus, url: "http://127.0.0.1:{down}", timeout: 1s}}
services:
  api:
    container: {story.name}
    rollback: {{steps: [container]}}
    rules:
      - name: error-rate
        source: prom
        query: sum(rate(http_requests_total{{code=~"5.."}}[1m])) / sum(rate(http_requests_total[1m]))
        condition: "> 0.05"
        for: 2s
        action: rollback
"""
    wd: Watchdogd = watchdogd(config)
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    status, deployment = wd.post("/v1/deployments", {"service": "api"})
    assert status == 201, deployment

    def no_data() -> bool:
        rules = wd.get(f"/v1/deployments/{deployment['id']}")[1]["rules"]
        return rules[0]["state"] == "no_data" and "no data" in rules[0]["reason"]

    wd.wait_for("error-rate no_data", no_data, timeout=15)
    assert wd.metric("watchdogd_rule_state", service="api", rule="error-rate") == 3.0
    assert (wd.metric("watchdogd_source_errors_total", source="prom") or 0) >= 2
    await asyncio.sleep(12)  # past the window
    assert rollbacks(wd) == []
    assert "v2" in story.running_image()
    _, audit = wd.get(f"/v1/audit?deployment={deployment['id']}")
    ended = [e for e in audit["items"] if e["action"] == "unverified"]
    assert ended and ended[0]["detail"]["blind_rules"] == ["error-rate"]
    assert wd.get(f"/v1/deployments/{deployment['id']}")[1]["state"] == "unverified"  # never promoted blind
    assert wd.stop() == 0


async def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn))
    wd.start()
    assert wd.process is not None
    config = wd.workdir / "watchdogd.yaml"
    good = config.read_text()
    config.write_text(good.replace("for: 10s", "for: 10 seconds"))
    wd.process.send_signal(signal.SIGHUP)
    wd.wait_for(
        "a refused reload",
        lambda: wd.metric("watchdogd_config_reloads_total", result="refused") == 1.0,
        timeout=10,
    )
    assert wd.get("/readyz", token=None)[0] == 200
    assert "invalid duration '10 seconds'" in wd.log()
    config.write_text(good.replace("for: 10s", "for: 20s"))
    wd.process.send_signal(signal.SIGHUP)
    wd.wait_for(
        "an applied reload",
        lambda: wd.metric("watchdogd_config_reloads_total", result="applied") == 1.0,
        timeout=10,
    )
    assert wd.get("/readyz", token=None)[0] == 200
    assert wd.stop() == 0


def test_a_rollback_rule_blind_on_a_real_prometheus_is_notified_and_never_promoted(
    watchdogd: Any, prometheus_server: Any, receiver: Receiver
) -> None:
    prom = prometheus_server()  # answers, but no series matches the query: an empty result
    config = f"""
defaults: {{interval: 500ms, window: 6s, grace: 1s, blind_after: 2s}}
notify:
  - {{type: webhook, url: "{receiver.url}", format: json, timeout: 2s}}
sources:
  prom: {{type: prometheus, url: "{prom.url}", timeout: 2s}}
services:
  api:
    container: watchdogd-absent-blind
    rules:
      - name: error-rate
        source: prom
        query: 'sum(rate(http_requests_total{{job="api", code=~"5.."}}[1m]))'
        condition: "> 0.05"
        action: rollback
"""
    wd: Watchdogd = watchdogd(config)
    wd.start()
    status, deployment = wd.post("/v1/deployments", {"service": "api", "image": "app:v2"})
    assert status == 201, deployment

    def notified(kind: str) -> bool:
        return any(b.get("event") == kind for b in receiver.bodies)

    wd.wait_for("the blind rule notified", lambda: notified("rule_blind"), timeout=15)
    assert wd.metric("watchdogd_rule_blind", service="api", rule="error-rate") == 1.0
    assert (wd.metric("watchdogd_source_errors_total", source="prom", reason="empty") or 0) >= 2
    wd.wait_for("the window's end", lambda: notified("unverified"), timeout=20)
    assert wd.get(f"/v1/deployments/{deployment['id']}")[1]["state"] == "unverified"
    assert wd.metric("watchdogd_deployment_unverified", service="api") == 1.0
    assert wd.get("/v1/rollbacks")[1]["items"] == []  # blind is not bad: nothing rolled back
    assert wd.stop() == 0
