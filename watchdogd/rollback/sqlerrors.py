"""PostgreSQL errors sorted for the sql step: retried, lost with the connection, or told to the operator.

A lock timeout, a statement timeout, a serialization failure or a deadlock is
retried; a connection that went away is lost (before COMMIT: rolled back by the
server; during COMMIT: only the ledger knows); any other error fails the step
with a reason that never quotes a row's data.
"""

from __future__ import annotations

import asyncpg

RETRYABLE = {
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
}


class _Failed(Exception):
    """A failure with a reason fit for the operator; ``sqlstate`` when the server gave one."""

    def __init__(self, reason: str, sqlstate: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate
        self.retryable = sqlstate in RETRYABLE if retryable is None else retryable


LOST = "connection_lost"
"""The ``sqlstate`` of a _Failed raised when the connection went away before COMMIT."""


class _CommitLost(Exception):
    """The connection went away while COMMIT was in flight: only the ledger knows the outcome."""


def _retryable(exc: asyncpg.PostgresError) -> bool:
    """A lock or statement timeout, a serialization failure, a deadlock: not a cancel by someone else."""
    state = exc.sqlstate or ""
    if state == "57014":
        return "statement timeout" in str(exc)
    return state in RETRYABLE


_QUOTING_CLASSES = ("22", "38", "39", "P0")
"""SQLSTATE classes whose messages may quote a row's value (a failed cast prints the text it was given,
a RAISE prints what it was told): data exceptions, external routines, PL/pgSQL."""


def _postgres_reason(exc: asyncpg.PostgresError) -> str:
    """The server's error for the operator: its message, unless the message may quote a row's data."""
    state = exc.sqlstate or "?"
    name = RETRYABLE.get(state) or type(exc).__name__
    if state.startswith(_QUOTING_CLASSES):
        return f"SQLSTATE {state} {name} (the server's message is not shown: it may quote data)"
    return f"SQLSTATE {state} {name}: {exc}"


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, _Failed) and exc.__cause__ is not None:
        return _connection_lost(exc.__cause__)  # a statement's failure that was the connection's
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state.startswith(("08", "57P"))
    # InternalClientError: the driver's protocol state broken by the server going away mid-call.
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError)
