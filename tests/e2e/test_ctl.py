"""``watchdogd ctl`` as a user runs it, against a live ``watchdogd run``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DEPLOYER_TOKEN, ROOT, TOKEN, VIEWER_TOKEN, Exporter, Watchdogd
from tests.e2e.test_daemon import Story, config_for
from tests.testbed.containers import ContainerRegistry, free_port
from tests.testbed.images import AppBehaviour
from watchdogd.demo.seed000 import MIGRATION_ID, SEED_ROLLBACK, SEED_VERIFY

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def ctl(url: str | None, *args: str, token: str | None = TOKEN, stdin: str | None = None) -> Result:
    """``watchdogd ctl ARGS``, ``url`` and ``token`` in WATCHDOGD_URL and WATCHDOGD_TOKEN (None: unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
    if url is not None:
        env["WATCHDOGD_URL"] = url
    if token is not None:
        env["WATCHDOGD_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "watchdogd", "ctl", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def ok(result: Result) -> Result:
    assert result.code == 0, result
    assert result.err == "", result
    return result


async def test_status_deploy_and_votes(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str, tmp_path: Path
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn, grace="1h", window="10m"))
    wd.start()
    assert ok(ctl(wd.url, "status")).out.splitlines() == ["no deployments"]

    await story.deploy_v2(AppBehaviour(error_ratio=0.0, log_line=""))
    image = app_images["v2"]
    down = tmp_path / "down.sql"
    down.write_text(SEED_ROLLBACK)
    verify = [arg for query in SEED_VERIFY for arg in ("--verify-sql", query)]
    deployed = ok(
        ctl(
            wd.url,
            "deploy",
            "--service=api",
            f"--image={image}",
            f"--migration-id={MIGRATION_ID}",
            f"--down-sql-file={down}",
            *verify,
            "--window=10m",
            "--rehearse",
        )
    )
    match = re.match(
        rf"deployment (\S+) of api \({re.escape(image)}\): watching, window ends in (10m|9m5\ds)\n",
        deployed.out,
    )
    assert match, deployed.out
    deployment = match.group(1)
    assert "  down SQL policy: run\n" in deployed.out
    assert (
        "    migration 20251227_add_product_import_system line 5 drops table product_import_jobs"
        in deployed.out
    )
    assert "  rehearsal: done: rehearsal succeeded and was rolled back (1 migrations)" in deployed.out

    def rules_have_values() -> bool:
        rules = wd.get(f"/v1/deployments/{deployment}")[1]["rules"]
        return all(r["value"] is not None for r in rules)

    wd.wait_for("a value for every rule", rules_have_values, timeout=20)
    status = ok(ctl(wd.url, "status")).out.splitlines()
    assert status[0].split() == ["DEPLOYMENT", "SERVICE", "STATE", "WINDOW", "LEFT", "IMAGE"]
    assert re.fullmatch(rf"{deployment}\s+api\s+watching\s+9m\d\ds\s+{re.escape(image)}", status[1]), status
    assert status[2].split() == ["RULE", "STATE", "VALUE", "SINCE"]
    assert re.fullmatch(r"\s{4}error-rate\s+ok\s+0\s+\d+s ago", status[3]), status
    assert re.fullmatch(r"\s{4}prisma-errors\s+ok\s+0\s+\d+s ago", status[4]), status
    assert status[-1] == "no rollback proposals"

    proposed = ok(ctl(wd.url, "rollback", deployment, "--reason", "customers report blank pages", "--json"))
    rollback = proposed.json()["id"]
    assert proposed.json()["state"] == "pending"
    again = ok(ctl(wd.url, "rollback", deployment, "--reason", "again"))
    assert re.fullmatch(
        rf"rollback {rollback} of {deployment} proposed: pending, executes in (59m\d\ds|1h) unless vetoed\n",
        again.out,
    ), again.out

    status = ok(ctl(wd.url, "status")).out.splitlines()
    header = status.index("") + 1
    assert status[header].split() == ["ROLLBACK", "DEPLOYMENT", "STATE", "VETO", "LEFT", "WHY"]
    assert re.fullmatch(
        rf"{rollback}\s+{deployment}\s+pending\s+(59m\d\ds|1h)\s+alice: customers report blank pages",
        status[header + 1],
    ), status

    acked = ok(ctl(wd.url, "ack", rollback))
    assert acked.out.startswith(f"rollback {rollback} of {deployment} acknowledged: pending, executes in ")
    vetoed = ok(ctl(wd.url, "veto", rollback, "--reason", "known noisy client", "--mute-for", "30m"))
    assert vetoed.out == (
        f"rollback {rollback} of {deployment} vetoed: vetoed; its rules are muted for 30m\n"
    )
    refused = ctl(wd.url, "approve", rollback)
    assert (refused.code, refused.out) == (1, "")
    assert (
        refused.err == f"watchdogd ctl: 409 conflict: rollback {rollback} is vetoed: it cannot be approved\n"
    )
    assert ctl(wd.url, "veto", rollback, "--reason", "twice").code == 0  # a veto stands; no error

    rehearsed = ok(ctl(wd.url, "rehearse", deployment))
    assert rehearsed.out.startswith(f"rehearsal of {deployment}: done: rehearsal succeeded")

    audit = ok(ctl(wd.url, "audit", "--deployment", deployment, "--since", "1h")).out.splitlines()
    assert audit[0].split() == ["AT", "ACTOR", "ACTION", "DEPLOYMENT", "ROLLBACK", "DETAIL"]
    actions = {(line.split()[1], line.split()[2]) for line in audit[1:]}
    assert {("alice", "proposed"), ("alice", "ack"), ("alice", "veto")} <= actions
    # registered by the POST, or noticed from Docker first and completed by it
    assert actions & {("alice", "deployment"), ("alice", "deployment_completed")}
    assert ("alice", "rehearsal") in actions
    only_alice = ok(ctl(wd.url, "audit", "--actor", "alice", "--json")).json()["items"]
    assert only_alice and {e["actor"] for e in only_alice} == {"alice"}

    # replayed from the start: the deployment (when the POST made it) and each rule's first state
    events = ok(ctl(wd.url, "events", "--last-event-id", "0", "--count", "2")).out.splitlines()
    assert len(events) == 2
    registered = rf"\S+Z deployment state=watching service=api deployment_id={deployment}"
    first_state = (
        r"\S+Z rule_state (error-rate|prisma-errors) no_data -> ok value=0 \(.*\)"
        rf" service=api deployment_id={deployment}"
    )
    assert all(re.fullmatch(f"{registered}|{first_state}", line) for line in events), events
    raw = ok(ctl(wd.url, "events", "--last-event-id", "1", "--count", "1", "--json")).out
    assert json.loads(raw)["id"] == "2"
    assert wd.stop() == 0


async def test_approve_executes_and_a_late_veto_is_refused(
    watchdogd: Any, app_images: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    await story.start_v1()
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn, grace="1h", window="10m"))
    wd.start()
    await story.deploy_v2(AppBehaviour(error_ratio=0.0, log_line=""))
    deployment = ok(ctl(wd.url, "deploy", "--service", "api", "--json")).json()["id"]
    rollback = ok(ctl(wd.url, "--json", "rollback", deployment, "--reason", "bad build")).json()["id"]
    approved = ok(ctl(wd.url, "approve", rollback))
    assert approved.out.startswith(f"rollback {rollback} of {deployment} approved: ")
    late = ctl(wd.url, "veto", rollback, "--reason", "wait")
    assert late.code == 1 and late.out == ""
    assert re.fullmatch(
        rf"watchdogd ctl: 409 conflict: rollback {rollback} is (executing|succeeded|failed)"
        r": too late to veto\n",
        late.err,
    ), late.err

    def finished() -> bool:
        return wd.get(f"/v1/rollbacks/{rollback}")[1]["state"] in ("succeeded", "failed")

    wd.wait_for("the approved rollback to finish", finished, timeout=60)
    shown = ok(ctl(wd.url, "status", "--json")).json()
    assert [r["id"] for r in shown["rollbacks"]] == [rollback]
    assert shown["deployments"][0]["state"] in ("rolled_back", "rollback_failed")
    assert wd.stop() == 0


async def test_tokens_and_usage_errors(
    watchdogd: Any, container_registry: ContainerRegistry, pg_dsn: str
) -> None:
    story = Story(container_registry, pg_dsn)
    wd: Watchdogd = watchdogd(config_for(story.name, story.port, pg_dsn))
    wd.start()
    bad = ctl(wd.url, "status", token="not-a-token-at-all")
    assert (bad.code, bad.out, bad.err) == (
        1,
        "",
        "watchdogd ctl: 401 unauthorized: unknown token; check WATCHDOGD_TOKEN\n",
    )
    none = ctl(wd.url, "status", token=None)
    assert none.code == 1 and none.err.startswith(
        "watchdogd ctl: 401 unauthorized: a bearer token is required"
    )
    viewer = ctl(wd.url, "rollback", "d1", "--reason", "x", token=VIEWER_TOKEN)
    assert viewer.code == 1
    assert viewer.err == "watchdogd ctl: 403 forbidden: victor is viewer; this needs operator\n"
    assert ok(ctl(wd.url, "status", token=VIEWER_TOKEN)).out == "no deployments\n"
    missing = ctl(wd.url, "ack", "nope")
    assert (missing.code, missing.err) == (1, "watchdogd ctl: 404 not_found: no rollback nope\n")
    unknown = ctl(wd.url, "deploy", "--service", "nope")
    assert unknown.code == 1 and unknown.err.startswith("watchdogd ctl: 422 invalid: no service 'nope'")
    half = ctl(wd.url, "deploy", "--service", "api", "--down-sql-file", "-", stdin="DROP TABLE t;")
    assert (half.code, half.err) == (
        2,
        "watchdogd ctl: --down-sql-file and --verify-sql need --migration-id\n",
    )
    by_id = ctl(wd.url, "deploy", "--service", "api", "--migration-id", "m1")
    assert by_id.code == 1 and by_id.err.startswith("watchdogd ctl: 422 no_migrations_dir: migration m1")
    bad_window = ctl(wd.url, "deploy", "--service", "api", "--window", "soon")
    assert bad_window.code == 2 and "invalid duration" in bad_window.err
    no_reason = ctl(wd.url, "veto", "r1")
    assert no_reason.code == 2 and "--reason" in no_reason.err
    assert wd.stop() == 0


def test_a_daemon_that_is_down_is_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["veto", "r1", "--reason", "x"], ["events"]):
        result = ctl(url, *args)
        assert result.code == 2, result
        assert result.err.startswith(f"watchdogd ctl: cannot reach watchdogd at {url}: connection refused")
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
    bad_url = ctl("127.0.0.1:9464", "status")
    assert bad_url.code == 2 and "WATCHDOGD_URL must start with http://" in bad_url.err


def notify_only(url: str) -> str:
    """Service ``api``, one rule that only notifies: nothing here can roll back."""
    return f"""
defaults: {{interval: 500ms, window: 1h}}
sources:
  app: {{type: scrape, url: "{url}", timeout: 1s}}
services:
  api:
    rules:
      - {{name: errors, source: app, metric: errors, condition: "> 5"}}
"""


def test_url_and_token_flags_win_over_the_environment(watchdogd: Any, exporter: Any) -> None:
    app: Exporter = exporter(lambda n: 0.0)
    wd: Watchdogd = watchdogd(notify_only(app.url))
    wd.start()
    nowhere = f"http://127.0.0.1:{free_port()}"
    before = ctl(nowhere, "--url", wd.url, "--token", TOKEN, "status", token="wrong-token-0123456789")
    assert ok(before).out == "no deployments\n"
    after = ctl(nowhere, "status", "--url", wd.url, "--token", VIEWER_TOKEN, token="wrong-token-0123456789")
    assert ok(after).out == "no deployments\n"
    assert ok(ctl(None, "--url", wd.url, "status")).out == "no deployments\n"  # token from the variable

    flag = ctl(None, "--url", wd.url, "--token", "wrong-token-0123456789", "status", token=TOKEN)
    assert (flag.code, flag.out, flag.err) == (
        1,
        "",
        "watchdogd ctl: 401 unauthorized: unknown token; check --token\n",
    )
    missing = ctl(wd.url, "status", token=None)
    assert missing.code == 1
    assert missing.err.endswith("; pass --token or set WATCHDOGD_TOKEN\n") and missing.err.count("\n") == 1
    bad_url = ctl(None, "--url", "127.0.0.1:9464", "status")
    assert bad_url.code == 2 and "--url must start with http://" in bad_url.err
    assert wd.stop() == 0


def test_promote_ends_the_window_as_healthy(watchdogd: Any, exporter: Any) -> None:
    app: Exporter = exporter(lambda n: 0.0)
    wd: Watchdogd = watchdogd(notify_only(app.url))
    wd.start()
    deployment = ok(ctl(wd.url, "--json", "deploy", "--service", "api", token=DEPLOYER_TOKEN)).json()["id"]
    refused = ctl(wd.url, "promote", deployment, token=DEPLOYER_TOKEN)
    assert (refused.code, refused.err) == (
        1,
        "watchdogd ctl: 403 forbidden: ci is deployer; this needs operator\n",
    )
    promoted = ok(ctl(wd.url, "promote", deployment))
    assert promoted.out == f"deployment {deployment} of api: promoted\n"
    again = ok(ctl(wd.url, "promote", deployment, "--json")).json()
    assert (again["id"], again["state"]) == (deployment, "promoted")
    assert wd.get(f"/v1/deployments/{deployment}")[1]["state"] == "promoted"
    unknown = ctl(wd.url, "promote", "nope")
    assert (unknown.code, unknown.err) == (1, "watchdogd ctl: 404 not_found: no deployment nope\n")
    assert wd.stop() == 0
