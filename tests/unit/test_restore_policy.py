"""A rollback that would restore a backup waits for an operator by default."""

from __future__ import annotations

from typing import Any

from watchdogd.config.models import Config
from watchdogd.decisions import policy_for


def config(**restore: Any) -> Config:
    return Config.model_validate(
        {
            "services": {
                "api": {
                    "database": {"dsn": "postgresql://app@127.0.0.1/app"},
                    "rollback": {"steps": ["sql", "restore", "verify"], "restore": restore},
                },
                "plain": {"database": {"dsn": "postgresql://app@127.0.0.1/app"}},
            }
        }
    )


def test_a_deployment_with_a_backup_to_restore_needs_approval() -> None:
    assert policy_for(config(), "api", None, backup_id="api-20250101T000000Z-abcdef").mode == "manual"


def test_without_a_backup_nothing_would_be_restored_and_auto_stays_auto() -> None:
    assert policy_for(config(), "api", None).mode == "auto"


def test_approve_false_lets_the_restore_run_on_its_own() -> None:
    assert policy_for(config(approve=False), "api", None, backup_id="b").mode == "auto"


def test_a_plan_without_restore_is_not_held_for_a_backup() -> None:
    assert policy_for(config(), "plain", None, backup_id="b").mode == "auto"
