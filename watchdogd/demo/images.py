"""Tiny app images for the tests, built with ``docker import`` from a busybox root.

``ensure_app_images(client)`` makes sure ``watchdogd-test/app:v1`` and
``watchdogd-test/app:v2`` exist and match the scripts in
:mod:`tests.testbed.app_scripts`; an image whose content-hash label differs
from the current scripts is rebuilt, a matching one is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.errors import APIError, ImageNotFound

from watchdogd.demo.app_scripts import SCRIPTS

BUSYBOX = Path("/bin/busybox")
IMAGE_REPOSITORY = "watchdogd-test/app"
APP_V1 = f"{IMAGE_REPOSITORY}:v1"
APP_V2 = f"{IMAGE_REPOSITORY}:v2"
APP_IMAGES: dict[str, str] = {"v1": APP_V1, "v2": APP_V2}

LABEL_PREFIX = "org.watchdogd-test"
HASH_LABEL = f"{LABEL_PREFIX}.content-hash"
VERSION_LABEL = f"{LABEL_PREFIX}.app-version"

PRISMA_LOG_LINE = (
    "PrismaClientKnownRequestError: Invalid `prisma.user.findMany()` invocation: "
    "The column `users.plan` does not exist in the current database. (code P2022)"
)

# Environment every app image starts from; each version overrides some of it.
COMMON_DEFAULTS: dict[str, str] = {
    "PATH": "/bin",
    "PORT": "8080",
    "RPS": "50",
    "ERROR_RATIO": "0.005",
    "LATENCY_SLOW_FRACTION": "0",
    "LATENCY_SLOW_SECONDS": "2",
    "LATENCY_FAST_SECONDS": "0.03",
    "LOG_LINE": "",
    "LOG_EVERY": "1",
    "UNHEALTHY": "0",
    "CRASH_AFTER": "",
    "QUEUE_DEPTH": "0",
    "QUEUE_GROWTH": "0",
}

IMAGE_DEFAULTS: dict[str, dict[str, str]] = {
    "v1": {**COMMON_DEFAULTS, "APP_VERSION": "v1"},
    "v2": {
        **COMMON_DEFAULTS,
        "APP_VERSION": "v2",
        "ERROR_RATIO": "0.2",
        "LOG_LINE": PRISMA_LOG_LINE,
    },
}

_LOCK_PATH = Path(tempfile.gettempdir()) / "watchdogd-testbed-images.lock"
_LOCK_TIMEOUT_S = 120.0


def _number(value: float) -> str:
    """Plain decimal text for a number (no exponent), as sh, awk and sleep accept."""
    if isinstance(value, bool):
        raise TypeError("expected a number, got a bool")
    if isinstance(value, int):
        return str(value)
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True)
class AppBehaviour:
    """Run-time overrides of the app image's environment; ``None`` keeps the image default."""

    app_version: str | None = None
    rps: float | None = None
    error_ratio: float | None = None
    latency_slow_fraction: float | None = None
    latency_slow_seconds: float | None = None
    latency_fast_seconds: float | None = None
    log_line: str | None = None
    log_every: float | None = None
    unhealthy: bool | None = None
    crash_after: float | None = None
    queue_depth: int | None = None
    queue_growth: float | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self, port: int | None = None) -> dict[str, str]:
        """Environment variables for ``containers.run``; only the overridden ones."""
        env: dict[str, str] = {}
        if port is not None:
            env["PORT"] = str(port)
        if self.app_version is not None:
            env["APP_VERSION"] = self.app_version
        numbers: dict[str, float | None] = {
            "RPS": self.rps,
            "ERROR_RATIO": self.error_ratio,
            "LATENCY_SLOW_FRACTION": self.latency_slow_fraction,
            "LATENCY_SLOW_SECONDS": self.latency_slow_seconds,
            "LATENCY_FAST_SECONDS": self.latency_fast_seconds,
            "LOG_EVERY": self.log_every,
            "CRASH_AFTER": self.crash_after,
            "QUEUE_DEPTH": self.queue_depth,
            "QUEUE_GROWTH": self.queue_growth,
        }
        for key, value in numbers.items():
            if value is not None:
                env[key] = _number(value)
        if self.log_line is not None:
            env["LOG_LINE"] = self.log_line
        if self.unhealthy is not None:
            env["UNHEALTHY"] = "1" if self.unhealthy else "0"
        env.update(self.extra_env)
        return env


def _env_change(key: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'ENV {key}="{escaped}"'


def image_changes(version: str, content_hash: str) -> list[str]:
    """Dockerfile instructions applied by ``docker import --change`` for one version."""
    changes = [_env_change(k, v) for k, v in sorted(IMAGE_DEFAULTS[version].items())]
    changes += [
        f'LABEL {HASH_LABEL}="{content_hash}"',
        f'LABEL {VERSION_LABEL}="{version}"',
        "WORKDIR /",
        'CMD ["/app/start"]',
    ]
    return changes


def build_root(root: Path, busybox: Path = BUSYBOX) -> None:
    """Populate ``root`` with a static busybox, its applet links and the app scripts."""
    for d in ("bin", "app", "www/cgi-bin", "etc", "run", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)

    shutil.copyfile(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True, timeout=30
    ).stdout.split()
    for applet in sorted(set(applets)):
        if applet and "/" not in applet and applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")

    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "www" / "index.html").write_text("watchdogd test app\n")
    for rel, text in SCRIPTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o755)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            yield base / name


def root_hash(root: Path) -> str:
    """SHA-256 over every path, mode, link target and file content of ``root``."""
    digest = hashlib.sha256()
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def version_hash(root_digest: str, version: str) -> str:
    """Hash of the root plus the version's baked-in defaults."""
    digest = hashlib.sha256(root_digest.encode())
    for key, value in sorted(IMAGE_DEFAULTS[version].items()):
        digest.update(f"{key}={value}\0".encode())
    return digest.hexdigest()[:32]


def tar_root(root: Path) -> bytes:
    """An uncompressed tarball of ``root`` owned by root:root, as ``docker import`` takes."""

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False, filter=reset)
    return buf.getvalue()


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise image builds between concurrent test processes."""
    with open(_LOCK_PATH, "a+") as fh:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {_LOCK_PATH} within {_LOCK_TIMEOUT_S}s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _current_hash(client: Any, tag: str) -> tuple[str | None, str | None]:
    """(image id, content-hash label) of ``tag``, or (None, None) if absent."""
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return None, None
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return image.id, labels.get(HASH_LABEL)


def ensure_app_images(client: Any, *, force: bool = False) -> dict[str, str]:
    """Build (if missing or stale) the app images; returns ``{"v1": tag, "v2": tag}``.

    ``client`` is a ``docker.DockerClient``.
    """
    with _build_lock(), tempfile.TemporaryDirectory(prefix="wdtest-root-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        build_root(root)
        digest = root_hash(root)
        data: bytes | None = None
        for version, tag in APP_IMAGES.items():
            want = version_hash(digest, version)
            old_id, have = _current_hash(client, tag)
            if have == want and not force:
                continue
            if data is None:
                data = tar_root(root)
            repository, _, image_tag = tag.rpartition(":")
            client.api.import_image_from_data(
                data, repository=repository, tag=image_tag, changes=image_changes(version, want)
            )
            new_id, have = _current_hash(client, tag)
            if have != want:
                raise RuntimeError(f"imported {tag} but its {HASH_LABEL} label is {have!r}")
            if old_id is not None and old_id != new_id:
                # The replaced image is dangling now; drop it unless a container still uses it.
                with contextlib.suppress(APIError):
                    client.images.remove(old_id, noprune=False)
    return dict(APP_IMAGES)
