"""A dry run says so: its proposal and its outcome are their own notification kinds, and the
text a chat shows starts with "dry run"."""

from __future__ import annotations

from tests.unit.test_lifecycle import CONFIG, make
from watchdogd.notify import Event, text
from watchdogd.testing import wait_until

DRY = CONFIG.replace(
    "defaults: {interval: 1s, grace: 60s, window: 1h}",
    "defaults: {interval: 1s, grace: 5s, window: 1h, mode: dry-run}",
)


class Heard:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def notify(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


async def test_a_dry_run_is_notified_as_a_dry_run_not_as_a_rollback() -> None:
    assert DRY != CONFIG
    world = await make(DRY)
    heard = Heard()
    world.daemon.report.notifier = heard
    try:
        deployment = await world.deploy()
        await world.feed("a", 1.0)
        await world.clock.advance(5)
        await wait_until(lambda: world.recorded.of("dry_run"), what="the dry run")
        kinds = heard.kinds()
        assert "dry_run_proposal" in kinds and "dry_run" in kinds
        assert "proposal" not in kinds and "rollback_started" not in kinds
        assert world.steps["container"].runs == []
        for event in heard.events:
            if event.kind.startswith("dry_run"):
                assert event.deployment_id == deployment.id
                assert text(event).startswith("dry run: "), text(event)
                assert text(event).count("dry run") == 1, text(event)
    finally:
        await world.daemon.close(2)


async def test_an_ordinary_proposal_is_still_a_proposal() -> None:
    world = await make()
    heard = Heard()
    world.daemon.report.notifier = heard
    try:
        await world.deploy()
        await world.feed("a", 1.0)
        await wait_until(lambda: "proposal" in heard.kinds(), what="the proposal")
        assert not any(k.startswith("dry_run") for k in heard.kinds())
        assert not any("dry run" in text(e) for e in heard.events)
    finally:
        await world.daemon.close(2)
