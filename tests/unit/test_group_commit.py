"""Audit lines written together when many come at once; each caller back once its own is written."""

from __future__ import annotations

import asyncio

import pytest

from watchdogd.errors import StoreError
from watchdogd.store.group import GroupCommit
from watchdogd.testing import FakeClock, memory_store


async def test_callers_at_once_share_a_commit_and_each_returns_after_its_own() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> None:
        await asyncio.sleep(0.01)  # a commit with its fsync
        batches.append(items)

    commit: GroupCommit[int] = GroupCommit(write)
    returned: list[int] = []

    async def caller(n: int) -> None:
        await commit(n)
        assert any(n in batch for batch in batches)  # written before the caller goes on
        returned.append(n)

    await asyncio.gather(*(caller(n) for n in range(1000)))
    assert sorted(returned) == list(range(1000))
    assert [n for batch in batches for n in batch] == list(range(1000))  # in the order they came
    assert len(batches) <= 3


async def test_a_failed_commit_is_heard_by_every_caller_of_its_batch_and_the_next_one_writes() -> None:
    down = True

    async def write(items: list[str]) -> None:
        await asyncio.sleep(0)
        if down:
            raise StoreError("state store: disk I/O error")

    commit: GroupCommit[str] = GroupCommit(write)
    results = await asyncio.gather(commit("a"), commit("b"), return_exceptions=True)
    assert [str(r) for r in results] == ["state store: disk I/O error"] * 2
    down = False
    await commit("c")


async def test_a_thousand_audit_lines_at_once_are_all_kept_in_order() -> None:
    store = await memory_store(FakeClock())
    await asyncio.gather(*(store.audit("watchdogd", "rule_state", {"n": n}, "d1") for n in range(1000)))
    entries = await store.audit_entries("d1", limit=2000)
    assert [e.detail["n"] for e in entries] == list(reversed(range(1000)))  # newest first


async def test_a_store_error_reaches_the_auditing_caller() -> None:
    store = await memory_store(FakeClock())
    await store.aclose()
    with pytest.raises(StoreError):
        await store.audit("watchdogd", "rule_state", {}, "d1")
