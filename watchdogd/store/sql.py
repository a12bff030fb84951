"""How the store is written once for both databases: operations a backend runs.

Each store call is an operation: a generator that yields ``Statement``s (SQL
with ``?`` placeholders) and is sent back each one's rows, or the number of
rows it changed. ``SqliteStore`` runs operations in a thread under its lock,
``PgStore`` on a pooled connection; ``Mode`` says what transaction they need.
State changes are single conditional ``UPDATE``s: of two racing writers,
exactly one sees its row change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Generic, TypeVar, cast

from watchdogd.errors import StoreError
from watchdogd.store.rows import Row
from watchdogd.store.schema import SCHEMA_VERSION, statements

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: tuple[Any, ...]
    rows: bool
    """True: its rows are wanted (SELECT, RETURNING); False: how many rows it changed."""


Op = Generator[Statement, Any, T]
"""An operation: the statements of one store call, each given its result."""


class Mode(Enum):
    """What an operation asks of the backend around its statements."""

    ONE = auto()
    """One statement, committed on its own."""
    READ = auto()
    """Reads that must see one snapshot (a rollback and its steps)."""
    WRITE = auto()
    """A transaction that reads, decides and writes: serialised with other writers."""
    LAZY = auto()
    """Statements rewritten so often (rule states) that a power loss may take their latest
    version: one transaction, committed without waiting for the disk."""


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    value: T


def advance(op: Op[T], result: Any) -> Statement | Done[T]:
    """Send ``op`` the last statement's result: its next statement, or what it returned."""
    try:
        return op.send(result)
    except StopIteration as stop:
        return Done(stop.value)


def fetch(sql: str, *params: Any) -> Op[list[Row]]:
    result = yield Statement(sql, params, rows=True)
    return cast(list[Row], result)


def change(sql: str, *params: Any) -> Op[int]:
    result = yield Statement(sql, params, rows=False)
    return cast(int, result)


def marks(values: Collection[Any]) -> str:
    """``(?, ?, ?)`` for an ``IN`` list or a ``VALUES`` row of ``values``."""
    return "(" + ", ".join("?" for _ in values) + ")"


def texts(states: Sequence[str]) -> tuple[str, ...]:
    """States as plain text parameters."""
    return tuple(map(str, states))


class SqlBase(ABC):
    """What the operations stand on; a backend runs them (``_run``), opens and closes."""

    def __init__(self, clock: Callable[[], float], prefix: str, where: str, unit: str) -> None:
        self.clock = clock
        self._p = prefix
        """Written before each table name: the PostgreSQL schema."""
        self._where = where
        """What errors name after ``state store``: the path, or the DSN (password masked) and schema."""
        self._unit = unit
        """What an operator points watchdogd at instead: ``file`` or ``schema``."""

    @abstractmethod
    async def _run(self, op: Op[T], mode: Mode) -> T: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    def _serialize(self, key: str) -> Op[None]:
        """Hold writers that name the same ``key`` off until this transaction ends.

        Nothing to do where a write transaction already excludes every other writer (SQLite).
        """
        yield from ()

    def _migrate(self, migrations: Mapping[int, str]) -> Op[None]:
        p = self._p
        yield from change(f"CREATE TABLE IF NOT EXISTS {p}schema_version (version integer NOT NULL)")
        [(found,)] = yield from fetch(f"SELECT max(version) FROM {p}schema_version")
        current = int(found or 0)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"state store {self._where} has schema version {current}, newer than this watchdogd"
                f" ({SCHEMA_VERSION}): upgrade watchdogd or point it at another {self._unit}"
            )
        if current == SCHEMA_VERSION:
            return
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in statements(migrations[version]):
                yield from change(statement)
        yield from change(f"DELETE FROM {p}schema_version")
        yield from change(f"INSERT INTO {p}schema_version (version) VALUES (?)", SCHEMA_VERSION)
