"""``watchdogd init``: the starter config and the tokens file it writes."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest

from watchdogd.auth import Tokens
from watchdogd.cli import main
from watchdogd.config import load_config
from watchdogd.config.models import HttpSource
from watchdogd.init import CONFIG_NAME, TOKENS_NAME, InitRefused, NewToken, new_tokens, write_starter

TOKEN_LINE = re.compile(r"  (\S+)\s+(admin|operator|deployer)\s+(\S+)")


def test_one_token_per_role_named_after_it() -> None:
    tokens = new_tokens()
    assert [(t.name, t.role) for t in tokens] == [
        ("admin", "admin"),
        ("operator", "operator"),
        ("deployer", "deployer"),
    ]
    assert len({t.token for t in tokens}) == 3
    assert all(len(t.token) >= 43 for t in tokens)  # 32 random bytes, URL-safe base64
    assert tokens[0].token not in repr(tokens[0])


def test_the_tokens_file_keeps_only_digests(tmp_path: Path) -> None:
    tokens = new_tokens()
    written = write_starter(tmp_path, tokens)
    text = written.tokens_file.read_text()
    for token in tokens:
        assert token.token not in text
        assert f"sha256: {hashlib.sha256(token.token.encode()).hexdigest()}" in text
    known = Tokens.load(written.tokens_file)
    for token in tokens:
        principal = known.check(token.token)
        assert principal is not None and (principal.name, principal.role) == (token.name, token.role)
    assert stat.S_IMODE(written.tokens_file.stat().st_mode) == 0o600


def test_the_starter_config_is_valid_as_written(tmp_path: Path) -> None:
    written = write_starter(tmp_path, new_tokens())
    assert written.config == tmp_path / CONFIG_NAME
    config = load_config(written.config)
    assert config.server.listen == "127.0.0.1:9464"
    assert config.server.tokens_file == tmp_path / TOKENS_NAME
    assert config.state.url.secret() == f"sqlite:///{tmp_path / 'state.db'}"
    assert [type(s) for s in config.sources.values()] == [HttpSource]
    [service] = config.services.values()
    assert service.health == "health"
    assert [rule.action for rule in service.rules] == ["notify"]


def test_the_commented_rollback_rule_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = write_starter(tmp_path, new_tokens()).config.read_text()
    assert "#   action: rollback" in text
    uncommented = re.sub(r"(?m)^      # (- name|  )", r"      \1", text)
    uncommented = uncommented.replace("    # container: app", "    container: app")
    edited = tmp_path / "edited.yaml"
    edited.write_text(uncommented)
    [service] = load_config(edited).services.values()
    assert [(rule.name, rule.action) for rule in service.rules] == [
        ("health-down", "notify"),
        ("health-failing", "rollback"),
    ]
    assert service.plan() == ("container", "verify")


@pytest.mark.parametrize("present", [CONFIG_NAME, TOKENS_NAME])
def test_refuses_to_overwrite_and_writes_nothing(tmp_path: Path, present: str) -> None:
    (tmp_path / present).write_text("mine\n")
    with pytest.raises(InitRefused, match=f"{present} already exists in {tmp_path}: nothing written"):
        write_starter(tmp_path, new_tokens())
    assert sorted(p.name for p in tmp_path.iterdir()) == [present]
    assert (tmp_path / present).read_text() == "mine\n"


def test_makes_the_directory(tmp_path: Path) -> None:
    written = write_starter(tmp_path / "a" / "b", new_tokens())
    assert written.config.parent == tmp_path / "a" / "b"
    assert load_config(written.config).services


def test_a_directory_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InitRefused, match="cannot make"):
        write_starter(tmp_path / "file" / "sub", [NewToken("admin", "admin", "x" * 43)])


def test_the_command_prints_each_token_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    shown = [m.groups() for m in map(TOKEN_LINE.fullmatch, out.splitlines()) if m]
    assert [(name, role) for name, role, _ in shown] == [
        ("admin", "admin"),
        ("operator", "operator"),
        ("deployer", "deployer"),
    ]
    known = Tokens.load(tmp_path / TOKENS_NAME)
    for name, _, token in shown:
        assert out.count(token) == 1
        principal = known.check(token)
        assert principal is not None and principal.name == name
    assert f"watchdogd run --config {tmp_path / CONFIG_NAME}" in out

    before = (tmp_path / TOKENS_NAME).read_text()
    assert main(["init", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"watchdogd init: watchdogd.yaml and tokens.yaml already exist in {tmp_path}:"
        " nothing written (move them away, or init another directory)\n"
    )
    assert (tmp_path / TOKENS_NAME).read_text() == before


def test_the_default_directory_is_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert "watchdogd check --config watchdogd.yaml" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOKENS_NAME, CONFIG_NAME]
