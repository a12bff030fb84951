"""The command step runs real programs: argv, environment, timeout, exit codes, and its journal."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from watchdogd.config.checks import check_config
from watchdogd.config.models import CommandStepConfig, Config, ServiceConfig
from watchdogd.model import ContainerSnapshot, Reason, RollbackState, StepState
from watchdogd.rollback.base import RollbackTarget
from watchdogd.rollback.command import CommandStep
from watchdogd.rollback.plan import Executor, target_to_json
from watchdogd.store import Store, open_store
from watchdogd.testing import wait_until

pytestmark = pytest.mark.integration


def command(**raw: Any) -> CommandStepConfig:
    return CommandStepConfig.model_validate(raw)


def target(deployment: str = "d1") -> RollbackTarget:
    service = ServiceConfig.model_validate({"rollback": {"steps": ["command:redeploy"]}})
    return RollbackTarget(
        "api",
        deployment,
        service,
        previous=ContainerSnapshot("api", "registry.local/app:v1.0.0", "", {}),
        current=ContainerSnapshot("api", "registry.local/app:v1.1.0", "", {}),
        reason="error rate 20% > 5%",
    )


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'state.db'}")
    yield opened
    await opened.aclose()


async def test_argv_runs_without_a_shell_and_gets_the_previous_version(tmp_path: Path) -> None:
    deploy = script(tmp_path / "deploy.sh", 'echo "deploying $1 $2 $3"; echo "to stderr" >&2\n')
    cfg = command(argv=[str(deploy), "production", "--version", "${previous_tag}; touch pwned"])
    result = await CommandStep("redeploy", cfg, None).run(target())
    assert result.status == "done", result.detail
    assert "deploying production --version v1.0.0; touch pwned" in result.detail
    assert "to stderr" in result.detail
    assert result.detail.startswith("exit 0 after")
    assert not (tmp_path / "pwned").exists()  # the ';' reached the program as text, no shell saw it


async def test_shell_only_when_asked(tmp_path: Path) -> None:
    cfg = command(argv=["echo one && echo two > out.txt"], shell=True, cwd=str(tmp_path))
    result = await CommandStep("s", cfg, None).run(target())
    assert result.status == "done", result.detail
    assert (tmp_path / "out.txt").read_text() == "two\n"
    with pytest.raises(ValidationError, match="one string"):
        command(argv=["echo", "two"], shell=True)


async def test_environment_is_small_and_secrets_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOGD_API_TOKEN", "daemon-token-value")
    env_file = tmp_path / "rollback.env"
    env_file.write_text("# the backup's credentials\nexport PGPASSWORD='s3cret-pass'\nBACKUP_DIR=/backups\n")
    show = script(
        tmp_path / "show.sh",
        'echo "pw=$PGPASSWORD dir=$BACKUP_DIR mode=$MODE api=$API_KEY token=$WATCHDOGD_API_TOKEN"\n'
        'echo "svc=$WATCHDOGD_SERVICE prev=$WATCHDOGD_PREVIOUS_IMAGE reason=$WATCHDOGD_REASON"\n'
        'echo "url=postgresql://app:dbpass@db/app"\n'
        "pwd\n",
    )
    cfg = command(
        argv=[str(show)],
        env={"MODE": "restore", "API_KEY": "key-value-123"},
        env_file=str(env_file),
        cwd=str(tmp_path),
    )
    result = await CommandStep("show", cfg, None).run(target())
    assert result.status == "done", result.detail
    assert "pw=*** dir=*** mode=restore api=*** token=\n" in result.detail  # env_file values are secrets
    assert "s3cret-pass" not in result.detail and "key-value-123" not in result.detail
    assert "daemon-token-value" not in result.detail
    assert "svc=api prev=registry.local/app:v1.0.0 reason=error rate 20% > 5%" in result.detail
    assert "dbpass" not in result.detail
    assert str(tmp_path) in result.detail


async def test_an_unreadable_env_file_fails_the_step_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = command(argv=["touch", str(marker)], env_file=str(tmp_path / "missing.env"))
    result = await CommandStep("x", cfg, None).run(target())
    assert result.status == "failed" and "missing.env" in result.detail
    assert not marker.exists()
    (tmp_path / "bad.env").write_text("PASSWORD=hunter22\nthis line is wrong hunter22\n")
    cfg = command(argv=["touch", str(marker)], env_file=str(tmp_path / "bad.env"))
    result = await CommandStep("x", cfg, None).run(target())
    assert result.status == "failed" and "line 2: not KEY=VALUE" in result.detail
    assert "hunter22" not in result.detail
    assert not marker.exists()


async def test_exit_code_is_judged(tmp_path: Path) -> None:
    cfg = command(argv=["sh", "-c", "echo restoring; exit 3"])
    result = await CommandStep("x", cfg, None).run(target())
    assert result.status == "failed"
    assert result.detail.startswith("exit 3 after") and "(expected 0)" in result.detail
    assert "restoring" in result.detail
    accepted = await CommandStep("x", command(argv=["sh", "-c", "exit 3"], ok_exit_codes=[0, 3]), None).run(
        target()
    )
    assert accepted.status == "done"
    missing = await CommandStep("x", command(argv=[str(tmp_path / "nope.sh")]), None).run(target())
    assert missing.status == "failed" and "could not start" in missing.detail


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The child ignores SIGTERM: only the group's SIGKILL after kill_after stops it.
    body = f"(trap '' TERM; sleep 60) & echo $! > {pids}; echo started; wait\n"
    cfg = command(argv=[str(script(tmp_path / "slow.sh", body))], timeout="1s", kill_after="1s")
    started = time.monotonic()
    result = await CommandStep("slow", cfg, None).run(target())
    took = time.monotonic() - started
    assert result.status == "failed"
    assert result.detail.startswith("timed out after 1s") and "started" in result.detail
    assert took < 6
    child = int(pids.read_text())
    await wait_until(lambda: not _alive(child), within=5, what="the script's child to be gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: it waits only for its parent (here the init) to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_output_is_kept_within_its_limit() -> None:
    cfg = command(
        argv=["sh", "-c", "echo FIRST; i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done"]
    )
    cfg = cfg.model_copy(update={"output_limit": 1024})
    result = await CommandStep("x", cfg, None).run(target())
    assert "FIRST" in result.detail and "line4999" in result.detail
    assert "bytes left out" in result.detail
    assert len(result.detail) < 1400


async def test_a_finished_command_is_not_run_again_on_resume(tmp_path: Path, store: Store) -> None:
    runs = tmp_path / "runs"
    argv = ["sh", "-c", f"echo run >> {runs}; echo restored"]
    step = CommandStep("restore", command(argv=argv), store)
    first = await step.run(target())
    assert first.status == "done"
    again = await CommandStep("restore", command(argv=argv), store).run(target())
    assert again.status == "already_done"
    assert "not run again" in again.detail and "restored" in again.detail
    assert runs.read_text() == "run\n"
    idempotent = await CommandStep("restore", command(argv=argv, idempotent=True), store).run(target())
    assert idempotent.status == "done"
    assert runs.read_text() == "run\nrun\n"
    # another deployment's rollback runs it afresh
    assert (await step.run(target("d2"))).status == "done"


async def test_a_command_cut_off_by_a_crash_waits_for_the_operators_retry(
    tmp_path: Path, store: Store
) -> None:
    runs = tmp_path / "runs"
    argv = ["sh", "-c", f"echo run >> {runs}"]
    await store.command_started("d1", "command:restore")  # the process died while it ran
    cut = await CommandStep("restore", command(argv=argv), store).run(target())
    assert cut.status == "failed"
    assert "outcome is unknown" in cut.detail and "retry" in cut.detail
    assert not runs.exists()
    retried = await CommandStep("restore", command(argv=argv), store).run(target())
    assert retried.status == "done"
    assert runs.read_text() == "run\n"
    # a failed run is run again by a retry
    await store.command_ended("d1", "command:restore", "failed", 1, "exit 1")
    assert (await CommandStep("restore", command(argv=argv), store).run(target())).status == "done"
    assert runs.read_text() == "run\nrun\n"


async def test_executor_resume_keeps_the_step_output_and_runs_once(tmp_path: Path, store: Store) -> None:
    runs = tmp_path / "runs"
    svc = ServiceConfig.model_validate(
        {
            "rollback": {
                "steps": ["command:redeploy"],
                "commands": {"redeploy": {"argv": ["sh", "-c", f"echo run >> {runs}; echo redeployed"]}},
            }
        }
    )
    tgt = target()
    record, _ = await store.propose(
        "d1",
        "api",
        svc.plan(),
        Reason(at=0.0, text="manual", operator="alice"),
        target_to_json(tgt),
        RollbackState.PENDING,
        None,
    )
    steps = {"command:redeploy": CommandStep("redeploy", svc.rollback.commands["redeploy"], store)}
    done = await Executor(store, steps).execute(record, tgt)
    assert done.state is RollbackState.SUCCEEDED
    assert done.steps[0].state is StepState.DONE
    assert "redeployed" in (done.steps[0].detail or "")
    # a crash after the program ended, before the journal said done: the resume does not run it again
    await store.step_started(record.id, 0)
    await store.transition(record.id, RollbackState.EXECUTING, (RollbackState.SUCCEEDED,))
    again = await Executor(store, steps).execute((await store.get(record.id)) or record, tgt)
    assert again.state is RollbackState.SUCCEEDED
    assert runs.read_text() == "run\n"


def test_config_names_commands_and_placeholders() -> None:
    with pytest.raises(ValidationError, match="unknown placeholder"):
        command(argv=["deploy.sh", "--version", "${version}"])
    config = Config.model_validate(
        {"services": {"api": {"rollback": {"steps": ["command:redeploy", "verify"]}}}}
    )
    problems = check_config(config)
    assert any("no command 'redeploy' in rollback.commands" in message for _, message in problems)
    with pytest.raises(ValidationError):
        ServiceConfig.model_validate({"rollback": {"steps": ["command:bad name"]}})
    svc = ServiceConfig.model_validate(
        {"container": "api", "rollback": {"commands": {"restore": {"argv": ["rollback.sh"]}}}}
    )
    assert svc.plan() == ("container", "command:restore", "verify")
