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


def test_a_scrape_only_daemon_guarding_a_deployment_imports_no_driver() -> None:
    # started, a deployment registered, a poll evaluated: still none of the drivers
    program = textwrap.dedent(
        f"""
        import asyncio, sys
        from watchdogd.daemon import Daemon
        from watchdogd.testing import FakeClock, config_of, memory_store
        from watchdogd.watch.deployments import Registration

        CONFIG = '''
        defaults: {{interval: 1s, grace: 60s, window: 1h}}
        sources:
          app: {{type: scrape, url: "http://127.0.0.1:9/metrics"}}
        services:
          api:
            rollback: {{steps: [verify]}}
            rules:
              - {{name: errors, source: app, metric: up, condition: "> 1", action: rollback}}
        '''

        async def main():
            clock = FakeClock()
            daemon = await Daemon.open(config_of(CONFIG), store=await memory_store(clock), clock=clock)
            await daemon.deployments.register(Registration("api", "app:v2", None), "ci")
            await daemon.poll("app")
            await daemon.close(2)

        asyncio.run(main())
        print("LOADED:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    [line] = [line for line in loaded.stdout.splitlines() if line.startswith("LOADED:")]
    assert line == "LOADED:", f"imported while guarding: {line[7:]}"
