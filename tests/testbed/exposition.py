"""A ``/metrics`` exposition served from a thread on 127.0.0.1, for exporters tests drive.

A thread, not the test's event loop: Prometheus and watchdogd scrape it while a test
blocks (starting a server, sleeping between steps) as much as while it awaits.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any


def metrics_handler(text: Callable[[], str]) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler answering every GET with ``text()`` as Prometheus's text format."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    return Handler


@contextlib.contextmanager
def serving(text: Callable[[], str]) -> Iterator[str]:
    """``text()`` served on 127.0.0.1 at a free port while in the block; its ``host:port`` yielded."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), metrics_handler(text))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
