"""The leader lock against a real PostgreSQL: one holder, handed on when it goes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from watchdogd.leader import AdvisoryLock, Solo, election_for

pytestmark = pytest.mark.integration


async def test_one_leader_at_a_time_and_the_lock_passes_on(pg_dsn: str) -> None:
    first = AdvisoryLock(pg_dsn, "watchdogd-leader:test")
    second = AdvisoryLock(pg_dsn, "watchdogd-leader:test")
    other_schema = AdvisoryLock(pg_dsn, "watchdogd-leader:elsewhere")
    try:
        assert await first.campaign() is True
        assert await second.campaign() is False
        assert await first.campaign() is True  # still held: checked, not taken twice
        assert await other_schema.campaign() is True  # another state, another election
        await first.resign()
        assert first.leading is False
        assert await second.campaign() is True
        assert await first.campaign() is False
    finally:
        for lock in (first, second, other_schema):
            await lock.resign()


async def test_a_leader_whose_connection_dies_steps_down(pg_dsn: str) -> None:
    leader = AdvisoryLock(pg_dsn, "watchdogd-leader:test")
    follower = AdvisoryLock(pg_dsn, "watchdogd-leader:test")
    admin = await asyncpg.connect(pg_dsn)
    try:
        assert await leader.campaign() is True
        assert leader._conn is not None
        pid = leader._conn.get_server_pid()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):  # the signal is sent; wait for the backend to be gone
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.05)
        assert await leader.campaign() is False  # the check fails: no longer leading
        assert await follower.campaign() is True
    finally:
        await admin.close()
        await leader.resign()
        await follower.resign()


def test_sqlite_has_no_election() -> None:
    election = election_for("sqlite:///state.db", None)
    assert isinstance(election, Solo) and election.leading
    assert isinstance(election_for("postgresql://u@127.0.0.1/db", "watchdogd_state"), AdvisoryLock)
