"""Secrets from files or the environment: ``X_file`` and ``X_env`` for every secret field, read at load
(and so on every reload), masked like inline ones, every problem on its line without the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import FILE, load
from watchdogd.cli import main
from watchdogd.config import load_config, load_config_text

CONFIG = """\
state: {url_file: state.url}
sources:
  prom:
    type: prometheus
    url: http://127.0.0.1:9090
    bearer_token_file: /SECRETS/token
    basic_auth: {username: u, password_env: WD_TEST_PROM_PASSWORD}
    headers: {X-Plain: visible}
    headers_file: {Authorization: /SECRETS/auth}
  db: {type: postgres, dsn_file: /SECRETS/dsn}
  queue: {type: redis, url_env: WD_TEST_REDIS_URL, key: k}
services:
  api:
    container: api
    database: {dsn_file: /SECRETS/dsn}
    rollback: {steps: [container, webhook], webhook: {url_file: /SECRETS/hook}}
    rules:
      - {name: r, source: prom, query: up, condition: "> 1"}
"""


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "token").write_text("tok-s3cret\n")
    (folder / "auth").write_text("Bearer h3ader-s3cret\n")
    (folder / "dsn").write_text("postgresql://app:dsn-s3cret@127.0.0.1/app\n")
    (folder / "hook").write_text("https://u:hook-s3cret@hooks.example/T/hook?token=q-s3cret\n")
    (tmp_path / "state.url").write_text("postgresql://wd:state-s3cret@127.0.0.1/wd\n")
    monkeypatch.setenv("WD_TEST_PROM_PASSWORD", "env-s3cret")
    monkeypatch.setenv("WD_TEST_REDIS_URL", "redis://:redis-s3cret@127.0.0.1:6379/0")
    return folder


def text(folder: Path) -> str:
    return CONFIG.replace("/SECRETS", str(folder))


def test_every_secret_field_can_come_from_a_file_or_the_environment(secrets: Path, tmp_path: Path) -> None:
    config = load_config_text(text(secrets), FILE, tmp_path)
    prom = config.sources["prom"]
    assert prom.bearer_token.get_secret_value() == "tok-s3cret"  # type: ignore[union-attr]
    assert prom.basic_auth.password.get_secret_value() == "env-s3cret"  # type: ignore[union-attr]
    headers = {k: v.get_secret_value() for k, v in prom.headers.items()}  # type: ignore[union-attr]
    assert headers == {"X-Plain": "visible", "Authorization": "Bearer h3ader-s3cret"}
    assert config.sources["db"].dsn.secret() == "postgresql://app:dsn-s3cret@127.0.0.1/app"  # type: ignore[union-attr]
    assert config.sources["queue"].url.secret().startswith("redis://:redis-s3cret@")  # type: ignore[union-attr]
    assert config.state.url.secret() == "postgresql://wd:state-s3cret@127.0.0.1/wd"  # relative to the config
    service = config.services["api"]
    assert service.database.dsn.secret().endswith("dsn-s3cret@127.0.0.1/app")  # type: ignore[union-attr]
    assert "hook-s3cret" in service.rollback.webhook.url.secret()  # type: ignore[union-attr]
    assert "s3cret" not in repr(config)


def test_a_rotated_secret_is_read_again_on_reload(secrets: Path, tmp_path: Path) -> None:
    path = tmp_path / "watchdogd.yaml"
    path.write_text(text(secrets))
    before = load_config(path)
    (secrets / "token").write_text("rotated-s3cret\n")
    after = load_config(path)
    assert after.sources["prom"].bearer_token.get_secret_value() == "rotated-s3cret"  # type: ignore[union-attr]
    assert after.sources["prom"] != before.sources["prom"]  # the source is rebuilt by a reload


def test_check_masks_secrets_from_files(
    secrets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "watchdogd.yaml"
    path.write_text(text(secrets))
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        (
            "bearer_token_file: /SECRETS/token",
            "bearer_token_file: /SECRETS/nope",
            "6: sources.prom.bearer_token_file",
            "cannot read",
        ),
        (
            "password_env: WD_TEST_PROM_PASSWORD",
            "password_env: WD_TEST_UNSET_VARIABLE",
            "7: sources.prom.basic_auth.password_env",
            "WD_TEST_UNSET_VARIABLE is not set",
        ),
        (
            "dsn_file: /SECRETS/dsn}\n  queue",
            "dsn_file: /SECRETS/dsn, dsn: 'postgresql://a@b/c'}\n  queue",
            "10: sources.db.dsn_file",
            "give dsn or dsn_file, not both",
        ),
        (
            "headers: {X-Plain: visible}",
            "headers: {Authorization: visible}",
            "9: sources.prom.headers_file.Authorization",
            "given twice",
        ),
    ],
)
def test_a_secret_that_cannot_be_read_is_one_line_on_its_key(
    secrets: Path, tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    assert old in CONFIG
    bad = text(secrets).replace(old.replace("/SECRETS", str(secrets)), new.replace("/SECRETS", str(secrets)))
    problems = load(bad, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{FILE}:{where}: "), problems
    assert message in problems[0]
    assert "s3cret" not in problems[0]


def test_a_bad_value_from_a_file_is_refused_without_showing_it(secrets: Path, tmp_path: Path) -> None:
    (secrets / "dsn").write_text("not a dsn s3cret\n")
    problems = load(text(secrets), tmp_path)
    assert problems and all("s3cret" not in p for p in problems)
    assert any(p.startswith(f"{FILE}:10: sources.db.dsn") for p in problems), problems
