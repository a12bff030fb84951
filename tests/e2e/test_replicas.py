"""Two ``watchdogd run`` replicas on one PostgreSQL state: one leads, the other takes over.

The leader holds a PostgreSQL advisory lock on a connection of its own; a
``kill -9`` closes that connection, the lock goes with it, and the follower,
asking every second or two, gets it and resumes where the leader left off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Watchdogd, scrape_config
from tests.e2e.test_daemon import Story, config_for, first_rollback_in
from tests.testbed.containers import ContainerRegistry
from tests.testbed.images import AppBehaviour
from watchdogd.rollback.plan import FAULT_ENV, FAULT_EXIT

pytestmark = pytest.mark.integration

TAKEOVER = 15.0


@pytest.fixture
def replicas(tmp_path: Path, pg_dsn: str) -> Iterator[Any]:
    """Factory: ``replicas(config_text)`` -> two replicas, each in its own directory, on ``pg_dsn``."""
    made: list[Watchdogd] = []

    def make(config_text: str) -> tuple[Watchdogd, Watchdogd]:
        pair = []
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            replica = Watchdogd(workdir, config_text, state_url=pg_dsn)
            made.append(replica)
            pair.append(replica)
        return pair[0], pair[1]

    yield make
    for replica in made:
        if replica.process is not None and replica.process.poll() is None:
            replica.process.kill()
            replica.process.wait(10)


def leading(replica: Watchdogd) -> bool:
    return replica.metric("watchdogd_leader") == 1.0


def rule(replica: Watchdogd, deployment_id: str, name: str) -> dict[str, Any]:
    _, body = replica.get(f"/v1/deployments/{deployment_id}")
    return dict(next(r for r in body["rules"] if r["name"] == name))


def epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone


async def test_leader_killed_while_pending_the_follower_fires_at_the_original_time(
    replicas: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    config = config_for(story.name, story.port, pg_dsn, mode="dry-run", grace="0").replace(
        "for: 10s", "for: 20s"
    )
    a, b = replicas(config)
    a.start()
    b.start()
    assert leading(a) and not leading(b)
    assert a.get("/readyz", token=None) == (200, {"status": "ok", "leader": True})
    assert b.get("/readyz", token=None) == (200, {"status": "ok", "leader": False})

    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    deployment = story.register(b)  # written by the follower, picked up by the leader
    # the follower shows the leader's rule states, read from the shared store
    b.wait_for(
        "error-rate pending, seen on the follower",
        lambda: rule(b, deployment["id"], "error-rate")["state"] == "pending",
        timeout=30,
    )
    since = rule(b, deployment["id"], "error-rate")["since"]
    assert '"event": "rule_state"' not in b.log()  # a follower evaluates nothing

    a.kill()
    killed_at = time.monotonic()
    b.wait_for("the follower leading", lambda: leading(b), timeout=TAKEOVER)
    assert time.monotonic() - killed_at <= TAKEOVER
    assert b.get("/readyz", token=None)[1]["leader"] is True
    assert rule(b, deployment["id"], "error-rate")["since"] == since  # the window kept its start

    done = first_rollback_in(b, {"dry_run"}, timeout=60)
    # fired about 20s (the rule's `for`) after the rule went pending on the old leader
    assert 15 <= epoch(done["proposed_at"]) - epoch(since) <= 28, (since, done["proposed_at"])
    _, listed = b.get("/v1/rollbacks")
    assert len(listed["items"]) == 1
    assert b.stop() == 0


async def test_leader_killed_mid_rollback_the_follower_finishes_it_once(
    replicas: Any, app_images: Any, docker_client: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    before = await story.start_v1()
    a, b = replicas(config_for(story.name, story.port, pg_dsn))
    a.start(env={FAULT_ENV: "after:container"})  # dies once the container step is journaled done
    b.start()
    assert leading(a) and not leading(b)

    await story.deploy_v2(AppBehaviour(error_ratio=0.2, log_line=""))
    story.register(a)
    assert a.process is not None
    a.wait_for("the leader dying after the container step", lambda: a.process.poll() is not None, 90)
    assert a.process.returncode == FAULT_EXIT, a.log()

    b.wait_for("the follower leading", lambda: leading(b), timeout=TAKEOVER)
    done = first_rollback_in(b, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", f"{done['error']} {done['steps']}\n{b.log()}"
    assert [s["name"] for s in done["steps"]] == ["container", "sql", "verify"]

    # exactly once: one rollback, one ledger row, v1 running under the name, one bad container kept
    _, listed = b.get("/v1/rollbacks")
    assert len(listed["items"]) == 1
    await story.assert_rolled_back_once(before)
    assert "rollback_resuming" in b.log()
    assert b.stop() == 0


def test_a_veto_sent_to_the_follower_stops_the_leader(replicas: Any, exporter: Any) -> None:
    breaching = exporter(lambda _: 10.0)
    a, b = replicas(scrape_config(breaching.url, "window: 2m, grace: 8s"))
    a.start()
    b.start()
    assert leading(a) and not leading(b)
    status, _ = b.post("/v1/deployments", {"service": "api"})
    assert status == 201
    proposal = b.wait_for(
        "the leader's proposal, seen on the follower", lambda: b.get("/v1/rollbacks")[1]["items"], 15
    )[0]
    assert proposal["state"] == "pending"
    status, body = b.post(f"/v1/rollbacks/{proposal['id']}/veto", {"reason": "known noisy client"})
    assert (status, body["state"]) == (200, "vetoed"), body
    time.sleep(10.0)  # past the grace: the leader executes nothing
    _, on_leader = a.get(f"/v1/rollbacks/{proposal['id']}")
    assert on_leader["state"] == "vetoed" and on_leader["started_at"] is None
    assert "rollback_started" not in a.log()
    assert a.stop() == 0 and b.stop() == 0
