"""The state store: what a restart needs, in SQLite or PostgreSQL.

``open_store(url)`` opens one; ``Store`` is what the rest of watchdogd sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from watchdogd.config.types import redact_url
from watchdogd.errors import StoreError
from watchdogd.store.protocol import RollbackJournal, Store
from watchdogd.store.schema import SCHEMA_VERSION
from watchdogd.store.sqlite import SqliteStore

__all__ = ["SCHEMA_VERSION", "RollbackJournal", "Store", "open_store"]


async def open_store(url: str, clock: Callable[[], float] | None = None) -> Store:
    """The store a URL names, created or brought up to date.

    ``sqlite:///PATH`` (``sqlite:////abs/path.db`` for an absolute path;
    ``sqlite:///`` or ``sqlite:///:memory:`` for one in memory), or
    ``postgresql://USER@HOST/DB`` (``postgres://`` too).
    """
    if url.startswith("sqlite:///"):
        # Opening may create the file and migrate it: off the event loop.
        return await asyncio.to_thread(SqliteStore, url.removeprefix("sqlite:///") or ":memory:", clock)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so that a SQLite set-up never loads the PostgreSQL driver.
        from watchdogd.store.postgres import PgStore

        return await PgStore.open(url, clock=clock)
    raise StoreError(
        f"unsupported state store '{redact_url(url)}': use sqlite:///PATH or postgresql://USER@HOST/DB"
    )
