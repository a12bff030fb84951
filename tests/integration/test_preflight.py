"""``watchdogd check``'s look past the config text: the files it names, and one live poll of each source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.containers import free_port
from watchdogd.cli import main
from watchdogd.config import load_config
from watchdogd.preflight import check_files, check_live

pytestmark = pytest.mark.integration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watchdogd.yaml"
    path.write_text(text)
    return path


async def test_live_check_names_what_each_rule_sees(tmp_path: Path, prometheus_server: Any) -> None:
    prom = prometheus_server()
    down = free_port()
    config = load_config(
        write(
            tmp_path,
            f"""
sources:
  prom: {{type: prometheus, url: "{prom.url}"}}
  gone: {{type: prometheus, url: "http://127.0.0.1:{down}", timeout: 2s}}
services:
  api:
    container: api
    rules:
      - {{name: always, source: prom, query: "vector(0.01)", condition: "> 0.05", action: rollback}}
      - {{name: no-series, source: prom, query: 'sum(http_requests_total{{job="nope"}})', condition: "> 1",
          action: rollback}}
      - {{name: unreachable, source: gone, query: "vector(1)", condition: "> 1", action: notify}}
""",
        )
    )
    seen = {s.rule: s for s in await check_live(config)}
    assert seen["always"].verdict == "sees" and seen["always"].sample.value == pytest.approx(0.01)
    assert seen["no-series"].verdict == "blind"
    assert seen["no-series"].line.startswith("BLIND  api/no-series (rollback): empty result")
    assert seen["unreachable"].verdict == "blind" and seen["unreachable"].sample.error == "unreachable"


def test_files_a_config_points_to_are_checked(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  - {name: ci, role: root, token: aaaaaaaaaaaaaaaaaaaa}\n")
    script = tmp_path / "smoke.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    config = load_config(
        write(
            tmp_path,
            """
server: {tokens_file: tokens.yaml}
sources:
  smoke: {type: exec, command: [./smoke.sh], cwd: ., env_file: missing.env}
  other: {type: exec, command: [no-such-program-anywhere]}
services:
  api:
    rules:
      - {name: smoke, source: smoke, field: exit_code, condition: "!= 0", action: notify}
      - {name: other, source: other, field: exit_code, condition: "!= 0", action: notify}
""",
        )
    )
    problems = [f"{p.field}: {p.message}" for p in check_files(config, "watchdogd.yaml")]
    assert "tokens[0].role: must be viewer, deployer, operator or admin" in problems
    assert any(p.startswith("sources.smoke.env_file: cannot read") for p in problems), problems
    assert any(p.startswith("sources.smoke.command:") and "not executable" in p for p in problems), problems
    assert any(p.startswith("sources.other.command: no program") for p in problems), problems
    os.chmod(script, 0o755)
    (tmp_path / "missing.env").write_text("TOKEN=x\n")
    tokens.write_text("tokens:\n  - {name: ci, role: deployer, token: aaaaaaaaaaaaaaaaaaaa}\n")
    problems = [f"{p.field}: {p.message}" for p in check_files(config, "watchdogd.yaml")]
    assert problems == ["sources.other.command: no program 'no-such-program-anywhere' to run (not on PATH)"]


def test_check_live_exits_1_naming_a_rollback_rule_that_cannot_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        f"""
sources:
  gone: {{type: prometheus, url: "http://127.0.0.1:{free_port()}", timeout: 1s}}
services:
  api:
    container: api
    rules:
      - {{name: errors, source: gone, query: "sum(rate(x[1m]))", condition: "> 0.05", action: rollback}}
""",
    )
    assert main(["check", "--config", str(path), "--quiet"]) == 0  # the text is fine
    assert main(["check", "--config", str(path), "--quiet", "--live"]) == 1
    out, err = capsys.readouterr()
    assert "BLIND  api/errors (rollback): " in out and "Cannot connect" in out
    assert "1 rollback rule(s) cannot see: api/errors" in err


def test_check_refuses_a_promql_typo_and_a_bad_tokens_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tokens.yaml").write_text("tokens:\n  - {name: ci, role: viewer, sha256: abc}\n")
    path = write(
        tmp_path,
        """
server: {tokens_file: tokens.yaml}
sources:
  prom: {type: prometheus, url: "http://127.0.0.1:9090"}
services:
  api:
    container: api
    rules:
      - {name: errors, source: prom, query: "sum(rate(x[1m])", condition: "> 0.05", action: rollback}
""",
    )
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "query: PromQL that does not parse: unclosed left parenthesis" in err
    path.write_text(path.read_text().replace('"sum(rate(x[1m])"', '"sum(rate(x[1m]))"'))
    # a tokens file that is there is read even without --live: a broken one is never "valid"
    assert main(["check", "--config", str(path), "--quiet"]) == 2
    assert "tokens.yaml:2: tokens[0].sha256: must be 64 hex digits" in capsys.readouterr().err
    assert main(["check", "--config", str(path), "--live"]) == 2  # on the host: read, and refused
    assert "tokens.yaml:2: tokens[0].sha256: must be 64 hex digits" in capsys.readouterr().err
    (tmp_path / "tokens.yaml").unlink()
    assert main(["check", "--config", str(path), "--quiet"]) == 0  # not here: the host's file, unread
    assert main(["check", "--config", str(path), "--live"]) == 2  # on the host it must be there


def test_a_notify_rule_nobody_hears_is_a_warning_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
sources:
  h: {type: http, url: "http://127.0.0.1:1/"}
services:
  api:
    rules:
      - name: down
        source: h
        field: up
        condition: "< 1"
        action: notify
""",
    )
    assert main(["check", "--config", str(path), "--quiet"]) == 0
    assert f"{path}:11: services.api.rules[0].action: warning: a notify rule and no `notify:`" in (
        capsys.readouterr().err
    )


def test_check_live_refuses_a_superuser_database_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    down = free_port()
    path = write(
        tmp_path,
        f"""
services:
  api:
    container: api
    database: {{dsn: "postgresql://postgres@127.0.0.1:5432/test"}}
  admin-tool:
    container: admin-tool
    database: {{dsn: "postgresql://postgres@127.0.0.1:5432/test", allow_superuser: true}}
  gone:
    container: gone
    database: {{dsn: "postgresql://watchdogd:s3cret-pw@127.0.0.1:{down}/test"}}
""",
    )
    assert main(["check", "--config", str(path), "--quiet", "--live"]) == 1
    out, err = capsys.readouterr()
    assert (
        "REFUSED api: postgresql://postgres@127.0.0.1:5432/test connects as postgres, a PostgreSQL superuser"
        in out
    )
    assert "ok     admin-tool:" in out and "a superuser (allowed)" in out
    assert "DOWN   gone: cannot connect" in out and "s3cret-pw" not in out + err
    assert "the sql step cannot run for: api, gone" in err
