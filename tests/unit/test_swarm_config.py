"""A Swarm service's config: its container step is its rollback, accepted by the checks."""

from __future__ import annotations

from watchdogd.config.checks import check_config
from watchdogd.config.models import Config


def test_a_swarm_service_with_the_container_step_passes_the_checks() -> None:
    config = Config.model_validate(
        {"services": {"shop": {"swarm_service": "shop-svc", "rollback": {"steps": ["container"]}}}}
    )

    assert check_config(config) == []


def test_a_container_step_without_any_target_is_still_refused_naming_swarm_service() -> None:
    config = Config.model_validate({"services": {"shop": {"rollback": {"steps": ["container"]}}}})

    problems = [text for _, text in check_config(config)]

    assert any("swarm_service" in text and "container step" in text for text in problems), problems
