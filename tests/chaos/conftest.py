"""Faults against live ``watchdogd run`` processes: each case is bounded to well under a minute."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Exporter, Receiver, Watchdogd, exporter, receiver, watchdogd

__all__ = ["Exporter", "Receiver", "Watchdogd", "exporter", "hanging_receiver", "receiver", "watchdogd"]


@pytest.fixture
def hanging_receiver() -> Iterator[str]:
    """A webhook URL whose server accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()
