"""Tokens and roles, and the slowdown of an address that keeps guessing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from watchdogd.auth import Rejections, Throttle, Tokens
from watchdogd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    return path


def test_tokens_by_value_or_digest_with_roles(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"ci-pipeline-token-0001").hexdigest()
    tokens = Tokens.load(
        write(
            tmp_path,
            "tokens:\n"
            "  - {name: alice, role: operator, token: alice-token-0123456}\n"
            f"  - {{name: ci, role: admin, sha256: {digest}}}\n"
            "  - {name: victor, role: viewer, token: victor-token-012345}\n",
        )
    )
    alice = tokens.check("alice-token-0123456")
    assert alice is not None and alice.name == "alice" and alice.may("operator") and not alice.may("admin")
    ci = tokens.check("ci-pipeline-token-0001")
    assert ci is not None and ci.may("admin")
    victor = tokens.check("victor-token-012345")
    assert victor is not None and victor.may("viewer") and not victor.may("operator")
    assert tokens.check("alice-token-012345") is None
    assert tokens.check("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: 3\n", "tokens: expected a list of tokens"),
        (
            "tokens:\n  - {name: a, role: root, token: aaaaaaaaaaaaaaaaaaaa}\n",
            "tokens[0].role: must be viewer, deployer, operator or admin",
        ),
        (
            "tokens:\n  - {name: a, role: viewer, token: short}\n",
            "tokens[0].token: must be at least 16 characters",
        ),
        ("tokens:\n  - {name: a, role: viewer}\n", "tokens[0]: give exactly one of token or sha256"),
        ("tokens:\n  - {name: a, role: viewer, sha256: abc}\n", "tokens[0].sha256: must be 64 hex digits"),
        (
            "tokens:\n  - {name: a, role: viewer, sha256: " + "z" * 64 + "}\n",
            "tokens[0].sha256: must be 64 hex digits",
        ),
        (
            "tokens:\n  - {name: a, role: viewer, token: aaaaaaaaaaaaaaaaaaaa}\n"
            "  - {name: b, role: admin, token: aaaaaaaaaaaaaaaaaaaa}\n",
            "tokens[1].token: the same token as 'a' (line 2): each needs its own",
        ),
    ],
)
def test_bad_tokens_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Tokens.load(write(tmp_path, text))
    assert message in str(caught.value)
    assert "aaaaaaaaaaaaaaaaaaaa" not in str(caught.value)


def test_an_address_that_keeps_guessing_is_slowed_down() -> None:
    throttle = Throttle(free=3, window=60.0, base=0.25, ceiling=2.0)
    for n in range(3):
        assert throttle.delay("10.0.0.9", f"guess{n}", float(n)) == 0.0
        throttle.fail("10.0.0.9", f"guess{n}", float(n))
    assert throttle.delay("10.0.0.9", "other", 3.0) == 0.25
    throttle.fail("10.0.0.9", "other", 3.0)
    assert throttle.delay("10.0.0.9", "again", 4.0) == 0.5
    for n in range(10):
        throttle.fail("10.0.0.9", f"more{n}", 5.0 + n)
    assert throttle.delay("10.0.0.9", "again", 20.0) == 2.0  # capped
    assert throttle.delay("127.0.0.1", "again", 20.0) == 0.0  # others are not slowed
    assert throttle.delay("10.0.0.9", "again", 200.0) == 0.0  # the window forgets


def test_memory_is_bounded() -> None:
    throttle = Throttle(capacity=100)
    for n in range(1000):
        throttle.fail(f"peer-{n}", f"token-{n}", float(n))
    assert len(throttle._failures) <= 100


def test_refusals_are_logged_once_per_kind_per_interval() -> None:
    lines: list[dict[str, object]] = []

    class Logger:
        def warning(self, event: str, **fields: object) -> None:
            lines.append({"event": event, **fields})

    now = [0.0]
    rejections = Rejections(Logger(), interval=10.0, clock=lambda: now[0])
    for _ in range(1000):
        rejections.note("bad_token", peer="10.0.0.9")
        rejections.note("connection_limit")
    now[0] = 10.5
    rejections.note("bad_token", peer="10.0.0.9")
    assert [(line["kind"], line["count"]) for line in lines] == [
        ("bad_token", 1),
        ("connection_limit", 1),
        ("bad_token", 1000),
    ]
    assert rejections.counts == {"bad_token": 1001, "connection_limit": 1000}


def test_a_yaml_error_names_the_line_and_quotes_nothing(tmp_path: Path) -> None:
    secret = "secret-token-abcdefgh"
    for text in (
        f'tokens:\n  - {{name: a, role: viewer, token: "{secret}"\n  - x: [\n',
        f'tokens:\n  - name: a\n    role: viewer\n    token: "{secret}"\n     bad: [\n',
        f"tokens:\n  - name: a\n    token: {secret}\t\x07\n",
    ):
        with pytest.raises(ConfigError) as caught:
            Tokens.load(write(tmp_path, text))
        message = str(caught.value)
        assert secret not in message and "secret" not in message, message
        assert "token" not in message.replace("tokens.yaml", ""), message
        assert "tokens.yaml:" in message and caught.value.problems[0].line is not None, message


def test_duplicate_tokens_are_refused_with_the_line(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"shared-token-0123456789").hexdigest()
    text = (
        "tokens:\n"
        "  - {name: a, role: viewer, token: shared-token-0123456789}\n"
        "  - {name: b, role: viewer, token: other-token-0123456789}\n"
        f"  - {{name: c, role: admin, sha256: {digest.upper()}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        Tokens.load(write(tmp_path, text))
    (problem,) = caught.value.problems
    assert problem.line == 4 and problem.field == "tokens[2].sha256", problem
    assert "same token as 'a' (line 2)" in problem.message
    assert "shared-token" not in str(caught.value) and digest not in str(caught.value).lower()


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 64,  # the prefix is not part of the 64 digits
        "a" * 63 + "g",
        "a" * 65,
        " " + "a" * 64,
        "a" * 64 + "\n",
        "1" * 64,  # unquoted: YAML reads a number
    ],
)
def test_a_digest_is_exactly_64_hex_digits(tmp_path: Path, digest: str) -> None:
    quoted = digest if digest == "1" * 64 else f'"{digest.encode("unicode_escape").decode()}"'
    with pytest.raises(ConfigError) as caught:
        Tokens.load(write(tmp_path, f"tokens:\n  - name: a\n    role: viewer\n    sha256: {quoted}\n"))
    (problem,) = caught.value.problems
    assert problem.line == 4 and problem.field == "tokens[0].sha256", problem
    assert "64 hex digits" in problem.message
