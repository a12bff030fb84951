"""Faults against live ``watchdogd run`` processes: each case is bounded to well under a minute."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Receiver, Watchdogd, receiver, watchdogd

__all__ = ["Exporter", "Receiver", "Watchdogd", "hanging_receiver", "receiver", "watchdogd"]


class Exporter:
    """A /metrics endpoint on 127.0.0.1; ``value(n)`` gives the gauge for the n-th scrape (from 0)."""

    def __init__(self, value: Callable[[int], float]) -> None:
        self.scrapes = 0
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                number = value(exporter.scrapes)
                exporter.scrapes += 1
                body = f"# TYPE errors gauge\nerrors {number}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter() -> Iterator[Callable[[Callable[[int], float]], Exporter]]:
    made: list[Exporter] = []

    def make(value: Callable[[int], float]) -> Exporter:
        made.append(Exporter(value))
        return made[-1]

    yield make
    for one in made:
        one.close()


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
