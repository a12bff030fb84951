"""The exec source running real commands: JUnit reports, timeouts, fields and secrets."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry

from watchdogd.config.loader import load_config_text
from watchdogd.config.models import ExecSource
from watchdogd.model import RuleState
from watchdogd.rules import compile_rule, evaluate, start
from watchdogd.sources.base import Measure, Poller
from watchdogd.sources.exec import ExecCommand
from watchdogd.telemetry import Metrics

pytestmark = pytest.mark.integration

FAILED = Measure("field", "failed_tests")
EXIT = Measure("field", "exit_code")
LAST = Measure("field", "last_number")


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def junit(failures: int, errors: int = 0, passed: int = 10) -> str:
    cases = [f'<testcase name="ok{i}"/>' for i in range(passed)]
    cases += [f'<testcase name="bad{i}"><failure message="no"/></testcase>' for i in range(failures)]
    cases += [f'<testcase name="err{i}"><error message="boom"/></testcase>' for i in range(errors)]
    total = passed + failures + errors
    return (
        f'<?xml version="1.0"?>\n<testsuites><testsuite name="smoke" tests="{total}" '
        f'failures="{failures}" errors="{errors}">{"".join(cases)}</testsuite></testsuites>\n'
    )


def smoke_config(folder: Path, failures: int) -> str:
    """A smoke-test script writing a JUnit report with ``failures`` failed tests."""
    (folder / f"report-{failures}.xml.in").write_text(junit(failures))
    script(
        folder,
        f"smoke-{failures}.sh",
        f"""\
        echo "running 10 smoke tests"
        cp report-{failures}.xml.in junit.xml
        exit {1 if failures else 0}
        """,
    )
    return f"""
state: {{url: 'sqlite:///:memory:'}}
sources:
  smoke:
    type: exec
    command: [./smoke-{failures}.sh]
    report: junit.xml
    timeout: 10s
services:
  api:
    rollback: {{steps: [verify]}}
    rules:
      - {{name: smoke-tests, source: smoke, field: failed_tests, condition: "> 2", action: rollback}}
"""


async def rule_after_one_run(folder: Path, failures: int) -> tuple[RuleState, float | None, str]:
    config = load_config_text(smoke_config(folder, failures), "watchdogd.yaml", base_dir=folder)
    source = config.sources["smoke"]
    assert isinstance(source, ExecSource)
    rule_config = config.services["api"].rules[0]
    command = ExecCommand("smoke", source)
    poller = Poller(command, source.timeout, Metrics(CollectorRegistry()))
    at = time.time()
    sample = (await poller.poll([Measure.of(rule_config)], at))[Measure.of(rule_config)]
    rule = compile_rule(rule_config)
    state, _ = evaluate(rule, start(rule, at - 1), sample, at)
    return state.state, sample.value, command.last_output


async def test_three_failed_smoke_tests_fire_the_rule(tmp_path: Path) -> None:
    state, value, output = await rule_after_one_run(tmp_path, 3)
    assert value == 3.0
    assert state is RuleState.FIRING
    assert "running 10 smoke tests" in output


async def test_two_failed_smoke_tests_do_not(tmp_path: Path) -> None:
    state, value, _ = await rule_after_one_run(tmp_path, 2)
    assert value == 2.0
    assert state is RuleState.OK


async def test_failures_and_errors_are_summed_over_every_suite(tmp_path: Path) -> None:
    (tmp_path / "in.xml").write_text(
        '<testsuites><testsuite name="a" failures="1" errors="1"/>'
        '<testsuite name="b"><testcase name="x"><error/></testcase><testcase name="y"/></testsuite>'
        "</testsuites>"
    )
    script(tmp_path, "t.sh", "cp in.xml out.xml\n")
    source = ExecSource(type="exec", command=("./t.sh",), cwd=tmp_path, report=Path("out.xml"))
    answers = await ExecCommand("t", source).fetch([FAILED], time.time())
    assert answers[FAILED].value == 3.0


async def test_a_hanging_command_and_its_child_are_killed_at_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script(
        tmp_path,
        "hang.sh",
        f"""\
        sleep 300 &
        echo $! > {pid_file}
        echo "started the child"
        wait
        """,
    )
    source = ExecSource(type="exec", command=("./hang.sh",), cwd=tmp_path, timeout="1s")
    command = ExecCommand("hang", source)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        answers = await Poller(command, source.timeout, Metrics(CollectorRegistry())).poll(
            [EXIT], time.time()
        )
        took = time.monotonic() - started
    assert took < 3.0
    sample = answers[EXIT]
    assert sample.value is None
    assert sample.reason is not None and "timed out after 1s" in sample.reason
    assert "started the child" in command.last_output
    assert any(entry["event"] == "command_timed_out" for entry in logs)
    child = int(pid_file.read_text())
    await asyncio.sleep(0.2)  # SIGKILL was sent to the group; give the kernel a moment
    assert not _alive(child), f"child {child} outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead already: its parent (the killed shell) is gone, init reaps it
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


async def test_exit_code_and_last_number(tmp_path: Path) -> None:
    script(tmp_path, "p99.sh", 'echo "p99 is"\necho "latency 0.25 then 1.75 seconds"\nexit 3\n')
    source = ExecSource(type="exec", command=("./p99.sh",), cwd=tmp_path)
    answers = await ExecCommand("p99", source).fetch([EXIT, LAST], time.time())
    assert answers[EXIT].value == 3.0
    assert answers[LAST].value == 1.75

    silent = ExecSource(type="exec", command=("true",), cwd=tmp_path)
    answers = await ExecCommand("silent", silent).fetch([EXIT, LAST], time.time())
    assert answers[EXIT].value == 0.0
    assert answers[LAST].value is None and answers[LAST].reason == "no number in the output (exit code 0)"


async def test_a_shell_command_with_env_and_cwd(tmp_path: Path) -> None:
    source = ExecSource(
        type="exec",
        command='echo "$GREETING from $(pwd)"; exit 7',
        shell=True,
        cwd=tmp_path,
        env={"GREETING": "hello"},
    )
    command = ExecCommand("sh", source)
    answers = await command.fetch([EXIT], time.time())
    assert answers[EXIT].value == 7.0
    assert f"hello from {tmp_path}" in command.last_output


async def test_env_file_values_are_never_logged(tmp_path: Path) -> None:
    secret = "s3cr3t-smoke-password"
    env_file = tmp_path / "smoke.env"
    env_file.write_text(f"# credentials\nSMOKE_PASSWORD={secret}\nexport SMOKE_USER='ci'\n")
    script(tmp_path, "leak.sh", 'echo "user $SMOKE_USER password $SMOKE_PASSWORD"\nsleep 5\n')
    source = ExecSource(type="exec", command=("./leak.sh",), cwd=tmp_path, env_file=env_file, timeout="1s")
    command = ExecCommand("leak", source)
    with structlog.testing.capture_logs() as logs:
        answers = await Poller(command, source.timeout, Metrics(CollectorRegistry())).poll(
            [EXIT], time.time()
        )
        env_file.write_text(f"SMOKE_PASSWORD={secret}\nthis line is {secret}\n")
        broken = await Poller(command, source.timeout, Metrics(CollectorRegistry())).poll([EXIT], time.time())
    assert "user ci password ***" in command.last_output
    assert secret not in command.last_output
    assert answers[EXIT].reason is not None and secret not in answers[EXIT].reason
    assert broken[EXIT].reason == f"env_file {env_file}: line 2 is not KEY=VALUE"
    assert logs, "the timeout and the bad env_file are logged"
    assert secret not in repr(logs)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("this is not <xml", "is not XML"),
        ("<html><body>502</body></html>", "is not a JUnit report (root <html>)"),
        ('<testsuite failures="many"/>', "failures and errors must be whole numbers"),
        (None, "no report at"),
    ],
)
async def test_a_missing_or_garbage_report_is_no_data_with_the_reason(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    if content is not None:
        (tmp_path / "in.xml").write_text(content)
        script(tmp_path, "t.sh", "cp in.xml junit.xml\n")
    else:
        script(tmp_path, "t.sh", "exit 2\n")
    source = ExecSource(type="exec", command=("./t.sh",), cwd=tmp_path, report=Path("junit.xml"))
    sample = (await ExecCommand("t", source).fetch([FAILED], time.time()))[FAILED]
    assert sample.value is None
    assert sample.reason is not None and reason in sample.reason


async def test_a_stale_report_is_not_counted(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(junit(5))
    old = time.time() - 60
    os.utime(report, (old, old))
    source = ExecSource(type="exec", command=("true",), cwd=tmp_path, report=Path("junit.xml"))
    sample = (await ExecCommand("t", source).fetch([FAILED], time.time()))[FAILED]
    assert sample.value is None
    assert sample.reason is not None and "not written by this run" in sample.reason


async def test_after_deploy_waits_until_armed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = ExecSource(type="exec", command=("touch", str(marker)), after_deploy=True)
    command = ExecCommand("later", source)
    sample = (await command.fetch([EXIT], time.time()))[EXIT]
    assert sample.value is None and sample.reason == "waiting for a deploy (after_deploy)"
    assert not marker.exists()
    command.arm()
    assert (await command.fetch([EXIT], time.time()))[EXIT].value == 0.0
    assert marker.exists()


async def test_a_follower_replica_does_not_run_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = ExecCommand("smoke", ExecSource(type="exec", command=("touch", str(marker))))
    leading = False
    command.gate = lambda: leading
    sample = (await command.fetch([EXIT], time.time()))[EXIT]
    assert sample.value is None and sample.reason is not None and "leading replica" in sample.reason
    assert not marker.exists()
    leading = True
    assert (await command.fetch([EXIT], time.time()))[EXIT].value == 0.0
    assert marker.exists()
