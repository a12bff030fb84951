"""``watchdogd check`` names each service group: its members, the order their plans run in, and
the backups a restore step would read."""

from __future__ import annotations

from pathlib import Path

from watchdogd.config.describe import describe_config
from watchdogd.config.models import Config

ROOT = Path(__file__).resolve().parents[2]


def config() -> Config:
    return Config.model_validate(
        {
            "defaults": {"freeze_after_rollback": "24h"},
            "services": {
                name: {"container": name, "rollback": {"steps": ["container"]}}
                for name in ("api", "worker", "web")
            }
            | {"db": {"database": {"dsn": "postgresql://app@127.0.0.1/app"}, "rollback": {"steps": ["sql"]}}},
            "groups": {"checkout": {"services": ["api", "worker", "db"], "order": ["db", "worker", "api"]}},
        }
    )


def test_a_group_is_described_with_its_members_and_order() -> None:
    lines = describe_config(config())

    assert "groups (1):" in lines, lines
    at = lines.index("groups (1):")
    text = "\n".join(lines[at + 1 : at + 4])
    assert "checkout: api, worker, db" in text, text
    assert "db -> worker -> api" in text, text
    assert "one proposal" in text and "frozen for 1d" in text, text


def test_each_member_names_its_group_and_a_service_outside_none() -> None:
    lines = describe_config(config())

    def block(name: str) -> str:
        start = lines.index(f"  {name}:")
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
        return "\n".join(lines[start:end])

    assert "group: checkout (rolled back with worker, db; 3rd of 3)" in block("api"), block("api")
    assert "group: checkout (rolled back with api, worker; 1st of 3)" in block("db"), block("db")
    assert "group" not in block("web"), block("web")


def test_no_groups_line_without_groups() -> None:
    plain = Config.model_validate({"services": {"api": {"container": "api"}}})

    assert not any(line.startswith("groups") for line in describe_config(plain))


def test_a_restore_says_it_waits_for_approval_and_where_the_backups_are() -> None:
    text = "\n".join(
        describe_config(
            Config.model_validate(
                {
                    "backups": {"dir": "/var/lib/watchdogd/backups", "keep": 10, "max_age": "30d"},
                    "services": {
                        "db": {
                            "database": {"dsn": "postgresql://app@127.0.0.1/app"},
                            "rollback": {"steps": ["restore"]},
                        }
                    },
                }
            )
        )
    )

    assert "restore: the backup the deployment names (none: skipped), after an operator's approval" in text
    assert "backups: pg_dump -Fc into /var/lib/watchdogd/backups, newest 10 per service kept" in text
