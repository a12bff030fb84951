"""The operator page in a real browser: Debian's Chromium, headless, driven by Playwright.

A live ``watchdogd run`` proposes a rollback from a firing rule; an operator
signs in on ``/ui``, vetoes it by clicking, and the rollback never runs. A
viewer sees the same proposal and no button. No browser is downloaded:
Playwright drives ``/usr/bin/chromium`` (installed by scripts/testbed.sh).

``WATCHDOGD_UPDATE_SCREENSHOTS=1`` copies the screenshot taken here to
``docs/images/operator-page.png``, the picture in docs/operations.md.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import ROOT, TOKEN, VIEWER_TOKEN, Exporter, Watchdogd, scrape_config

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
GRACE = 25.0
"""Long enough for the browser to start, sign in and click on a busy machine."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; start the test bed with scripts/testbed.sh", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def sign_in(browser: Browser, wd: Watchdogd, token: str, errors: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(wd.url + "/ui")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#board")).to_be_visible()
    return page


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_an_operator_vetoes_by_clicking_and_the_rollback_does_not_run(
    watchdogd: Any, exporter: Any, browser: Browser, tmp_path: Path
) -> None:
    app: Exporter = exporter(lambda n: 10.0)
    wd: Watchdogd = watchdogd(scrape_config(app.url, f"window: 10m, grace: {GRACE:g}s", rule="for: 1s"))
    wd.start()
    status, deployment = wd.post("/v1/deployments", {"service": "api", "image": "app:v2"})
    assert status == 201, deployment
    errors: list[str] = []

    operator = sign_in(browser, wd, TOKEN, errors)
    expect(operator.locator("#who")).to_have_text("alice (operator)")
    expect(operator.locator("#stream")).to_have_text("live")
    # the rule turns firing on the page from the event stream, and its proposal appears with a countdown
    rule = operator.locator(f'[data-deployment="{deployment["id"]}"] tr[data-rule="errors"]')
    expect(rule).to_have_attribute("data-state", "firing", timeout=15_000)
    card = operator.locator("article.proposal")
    expect(card).to_have_count(1, timeout=15_000)
    rollback_id = card.get_attribute("data-rollback")
    assert rollback_id
    _, record = wd.get(f"/v1/rollbacks/{rollback_id}")
    assert record["state"] == "pending", record
    expect(card.locator(".countdown")).to_contain_text("executes in")
    expect(card.locator(".reasons")).to_contain_text("errors")

    # a viewer sees the same proposal and not one button
    viewer = sign_in(browser, wd, VIEWER_TOKEN, errors)
    expect(viewer.locator("#who")).to_have_text("victor (viewer)")
    expect(viewer.locator(f'article.proposal[data-rollback="{rollback_id}"]')).to_have_count(1)
    assert viewer.locator("main button").count() == 0
    viewer.close()

    shot = tmp_path / "operator-page.png"
    operator.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("WATCHDOGD_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "images" / "operator-page.png")

    card.locator("button.veto").click()
    operator.fill("#veto-reason", "known noisy metric; checked by hand")
    operator.select_option("#veto-mute", "30m")
    operator.click("#veto-confirm")
    expect(operator.locator("#message")).to_contain_text("vetoed")
    expect(operator.locator("article.proposal")).to_have_count(0)
    expect(operator.locator(f'#rollbacks tr[data-rollback="{rollback_id}"]')).to_have_attribute(
        "data-state", "vetoed"
    )
    expect(operator.locator('#audit tr[data-action="veto"]')).to_have_count(1)

    # past the end of its grace the rollback still has not run, and the muted rule proposes nothing new
    time.sleep(max(0.0, when(record["execute_at"]) - time.time()) + 2.0)
    _, final = wd.get(f"/v1/rollbacks/{rollback_id}")
    assert final["state"] == "vetoed" and final["started_at"] is None, final
    assert all(step["state"] == "pending" for step in final["steps"]), final
    _, audit = wd.get(f"/v1/audit?deployment={deployment['id']}")
    actions = [e["action"] for e in audit["items"]]
    assert "rollback_started" not in actions, actions
    veto = next(e for e in audit["items"] if e["action"] == "veto")
    assert veto["actor"] == "alice", veto
    _, rollbacks = wd.get("/v1/rollbacks")
    assert [r["state"] for r in rollbacks["items"]] == ["vetoed"], rollbacks
    operator.close()
    assert errors == [], errors
    assert wd.stop() == 0


def test_the_page_is_served_with_its_own_policy_and_a_bad_token_is_refused(
    watchdogd: Any, exporter: Any, browser: Browser
) -> None:
    app: Exporter = exporter(lambda n: 0.0)
    wd: Watchdogd = watchdogd(scrape_config(app.url, "window: 10m"))
    wd.start()
    with urllib.request.urlopen(wd.url + "/ui", timeout=10) as answer:
        policy = answer.headers["Content-Security-Policy"]
        assert answer.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy
    assert wd.get("/ui/../../etc/passwd", token=None)[0] == 404
    assert wd.get("/ui/tokens.yaml", token=None)[0] == 404
    errors: list[str] = []
    context = browser.new_context()
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(wd.url + "/ui")
    page.fill("#token", "not-a-token-0123456789")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("Unknown token.")
    expect(page.locator("#board")).to_be_hidden()
    # signed in, a reload of the same tab keeps the token; a new tab asks again
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who")).to_have_text("alice (operator)")
    page.reload()
    expect(page.locator("#who")).to_have_text("alice (operator)")
    other = context.new_page()
    other.goto(wd.url + "/ui")
    expect(other.locator("#login")).to_be_visible()
    page.click("#signout")
    expect(page.locator("#login")).to_be_visible()
    context.close()
    assert errors == [], errors
    assert wd.stop() == 0
