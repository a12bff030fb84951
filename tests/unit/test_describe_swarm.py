"""``watchdogd check`` says what a Swarm service's sources and target follow, not "container ''"."""

from __future__ import annotations

from watchdogd.config.describe import describe_config, describe_source
from watchdogd.config.models import Config, DockerLogsSource, ScrapeSource


def test_docker_logs_of_a_swarm_service_is_described_as_every_task() -> None:
    source = DockerLogsSource.model_validate({"type": "docker_logs", "swarm_service": "shop"})

    line = describe_source(source)

    assert "every task of Swarm service 'shop'" in line, line
    assert "container ''" not in line and "'None'" not in line, line


def test_docker_logs_of_a_container_is_still_described_as_before() -> None:
    source = DockerLogsSource.model_validate({"type": "docker_logs", "container": "api"})

    assert "log stream of container 'api'" in describe_source(source)


def test_scrape_of_a_swarm_service_names_the_service_and_its_url_template() -> None:
    source = ScrapeSource.model_validate(
        {"type": "scrape", "url": "http://127.0.0.1:90{slot}/metrics", "swarm_service": "shop"}
    )

    line = describe_source(source)

    assert "http://127.0.0.1:90{slot}/metrics" in line, line
    assert "on every task of Swarm service 'shop'" in line, line


def test_a_swarm_service_target_is_named_in_the_service_line() -> None:
    config = Config.model_validate(
        {"services": {"shop": {"swarm_service": "shop-svc", "rollback": {"steps": ["container"]}}}}
    )

    lines = describe_config(config)

    assert any("swarm service: shop-svc" in line for line in lines), lines
