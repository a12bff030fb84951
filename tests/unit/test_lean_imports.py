"""A sidecar carries only what its config uses: the heavy drivers are imported on demand."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("docker", "asyncpg", "redis", "jinja2", "pglast", "requests", "shtab")


def test_the_daemon_and_its_api_import_no_driver_a_scrape_only_config_does_not_use() -> None:
    # what `watchdogd run` imports before it reads the config: a fresh interpreter, so that
    # nothing another test imported counts
    program = textwrap.dedent(
        f"""
        import sys
        import watchdogd.cli, watchdogd.runner, watchdogd.daemon, watchdogd.api
        print(",".join(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"imported at start: {loaded.stdout.strip()}"
