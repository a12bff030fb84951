"""Running app containers with host networking on free 127.0.0.1 ports.

The engine runs without a bridge, so every container uses ``network_mode="host"``
and the app binds ``127.0.0.1:$PORT``. :class:`ContainerRegistry` remembers what a
test started and force-removes it at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from docker.errors import APIError, NotFound

from tests.testbed.images import APP_IMAGES, AppBehaviour

HOST = "127.0.0.1"
LABEL_TESTBED = "org.watchdogd-test.testbed"
LABEL_RUN = "org.watchdogd-test.run"

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition keyed by ``name{labels}`` as written."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


class ContainerExited(RuntimeError):
    """The container stopped while it was expected to come up."""

    def __init__(self, message: str, exit_code: int | None, logs: str) -> None:
        super().__init__(f"{message}\n--- container logs ---\n{logs}")
        self.exit_code = exit_code
        self.logs = logs


@dataclass
class AppContainer:
    """A running test app container and where to reach it."""

    container: Any  # docker.models.containers.Container
    port: int
    image: str
    behaviour: AppBehaviour = field(default_factory=AppBehaviour)

    @property
    def id(self) -> str:
        return str(self.container.id)

    @property
    def name(self) -> str:
        return str(self.container.name)

    @property
    def target(self) -> str:
        """``host:port`` as a Prometheus static target."""
        return f"{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/cgi-bin/metrics"

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/cgi-bin/health"

    def status(self) -> str:
        """Docker state (``running``, ``exited``, ...), freshly read."""
        self.container.reload()
        return str(self.container.status)

    def exit_code(self) -> int | None:
        self.container.reload()
        state = self.container.attrs.get("State") or {}
        if state.get("Running"):
            return None
        code = state.get("ExitCode")
        return None if code is None else int(code)

    def logs(self) -> str:
        raw: bytes = self.container.logs(stdout=True, stderr=True)
        return raw.decode(errors="replace")

    def health(self, timeout: float = 2.0) -> tuple[int, str]:
        return http_get(self.health_url, timeout)

    def metrics_text(self, timeout: float = 2.0) -> str:
        status, body = http_get(self.metrics_url, timeout)
        if status != 200:
            raise RuntimeError(f"{self.metrics_url} answered {status}: {body[:200]}")
        return body

    def metrics(self, timeout: float = 2.0) -> dict[str, float]:
        """Current samples, e.g. ``m['http_requests_total{code="500"}']``."""
        return parse_metrics(self.metrics_text(timeout))

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Block until the container stops (bounded); returns its exit code."""
        result = self.container.wait(timeout=timeout)
        return int(result["StatusCode"])

    def wait_logs(self, needle: str, timeout: float = 10.0) -> str:
        """Poll the logs until ``needle`` shows up (bounded); returns the logs."""
        deadline = time.monotonic() + timeout
        logs = self.logs()
        while needle not in logs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in logs of {self.name} after {timeout}s:\n{logs}")
            time.sleep(0.2)
            logs = self.logs()
        return logs

    def wait_answering(self, timeout: float = 20.0) -> None:
        """Wait until /cgi-bin/health answers at all (any HTTP status), bounded."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.status() not in ("created", "running"):
                raise ContainerExited(
                    f"container {self.name} ({self.image}) stopped before answering {self.health_url}",
                    self.exit_code(),
                    self.logs(),
                )
            try:
                self.health(timeout=1.0)
                return
            except (OSError, http.client.HTTPException) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.health_url} did not answer within {timeout}s (last: {last_error})\n"
            f"--- container logs ---\n{self.logs()}"
        )

    def wait_health_status(self, expected: int = 200, timeout: float = 20.0) -> None:
        """Wait until /cgi-bin/health answers with ``expected`` (bounded)."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            try:
                status, body = self.health(timeout=1.0)
                if status == expected:
                    return
                last = f"{status} {body[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{self.health_url} not {expected} after {timeout}s (last: {last})")


class ContainerRegistry:
    """Starts app containers for one test and force-removes them all at teardown.

    Containers the code under test creates can be covered too: name them with
    :meth:`name` (anything whose name starts with :attr:`name_prefix` is removed)
    or pass them to :meth:`track`.
    """

    def __init__(self, client: Any, run_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id or secrets.token_hex(4)
        self.name_prefix = f"wdtest-{self.run_id}-"
        self._containers: dict[str, Any] = {}

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_TESTBED: "1", LABEL_RUN: self.run_id}

    def name(self, suffix: str | None = None) -> str:
        """A container name that :meth:`cleanup` will remove."""
        return self.name_prefix + (suffix or secrets.token_hex(3))

    def track(self, container: Any) -> Any:
        self._containers[str(container.id)] = container
        return container

    def run_app(
        self,
        image: str = "v1",
        behaviour: AppBehaviour | None = None,
        *,
        name: str | None = None,
        port: int | None = None,
        wait: bool = True,
        timeout: float = 20.0,
        labels: dict[str, str] | None = None,
        attempts: int = 3,
    ) -> AppContainer:
        """Run the app image (``"v1"``, ``"v2"`` or any image ref) on a free port.

        With ``wait`` it returns once /cgi-bin/health answers. When the port was
        picked here and turns out to be taken, it retries on another one.
        """
        ref = APP_IMAGES.get(image, image)
        behaviour = behaviour or AppBehaviour()
        chosen_name = name or self.name()
        last: ContainerExited | None = None
        for _ in range(max(1, attempts)):
            run_port = port if port is not None else free_port()
            container = self.track(
                self.client.containers.run(
                    ref,
                    detach=True,
                    name=chosen_name,
                    network_mode="host",
                    environment=behaviour.env(run_port),
                    labels={**self.labels, **(labels or {})},
                )
            )
            app = AppContainer(container=container, port=run_port, image=ref, behaviour=behaviour)
            if not wait:
                return app
            try:
                app.wait_answering(timeout)
                return app
            except ContainerExited as exc:
                if port is not None or "Address already in use" not in exc.logs:
                    raise
                last = exc
                self._remove(container)
        assert last is not None
        raise last

    def _remove(self, container: Any) -> None:
        with contextlib.suppress(NotFound):
            try:
                container.remove(force=True, v=True)
            except APIError as exc:
                # "removal already in progress" is fine; anything else is not.
                if "in progress" not in str(exc):
                    raise
        self._containers.pop(str(container.id), None)

    def cleanup(self) -> None:
        """Force-remove every tracked, labelled or prefix-named container."""
        found: dict[str, Any] = dict(self._containers)
        with contextlib.suppress(APIError):
            for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}):
                found[str(c.id)] = c
            for c in self.client.containers.list(all=True, filters={"name": self.name_prefix}):
                if str(c.name).startswith(self.name_prefix):
                    found[str(c.id)] = c
        errors: list[str] = []
        for container in found.values():
            try:
                self._remove(container)
            except APIError as exc:
                errors.append(f"{container.id[:12]}: {exc}")
        if errors:
            raise RuntimeError("could not remove containers: " + "; ".join(errors))
