"""Which deploys are of a known-bad image, and which image holders may go."""

from __future__ import annotations

from watchdogd.model import ContainerSnapshot, Deployment, DeploymentFacts, DeploymentState
from watchdogd.rollback.holds import holder_name, releasable
from watchdogd.watch.knownbad import known_bad

V1 = ContainerSnapshot("api", "app:v1", "sha256:" + "1" * 64, {})
V2 = ContainerSnapshot("api", "app:v2", "sha256:" + "2" * 64, {})


def _deployment(
    ident: str,
    state: DeploymentState,
    current: ContainerSnapshot,
    finished: float | None = None,
    service: str = "api",
    started: float = 0.0,
) -> Deployment:
    facts = DeploymentFacts("docker", V1, current)
    return Deployment(ident, service, current.image, "app:v1", state, started, started + 60, finished, facts)


def test_an_image_rolled_back_within_the_span_is_known_bad_with_when_and_where() -> None:
    rolled = _deployment("d1", DeploymentState.ROLLED_BACK, V2, finished=1_000.0)
    again = _deployment("d2", DeploymentState.WATCHING, V2, started=2_000.0)

    mark = known_bad(again, [again, rolled], since=500.0)

    assert mark is not None
    assert mark["rolled_back_deployment"] == "d1" and mark["image_id"] == V2.image_id
    assert mark["reason"] == (
        "image app:v2 (sha256:222222222222) was rolled back at 1970-01-01T00:16:40Z (deployment d1)"
    )


def test_older_than_the_span_another_service_or_not_rolled_back_is_not_known_bad() -> None:
    again = _deployment("d2", DeploymentState.WATCHING, V2, started=2_000.0)
    old = _deployment("d1", DeploymentState.ROLLED_BACK, V2, finished=100.0)
    other = _deployment("d3", DeploymentState.ROLLED_BACK, V2, finished=1_000.0, service="web")
    failed = _deployment("d4", DeploymentState.ROLLBACK_FAILED, V2, finished=1_000.0)
    promoted = _deployment("d5", DeploymentState.PROMOTED, V2, finished=1_000.0)
    different = _deployment("d6", DeploymentState.ROLLED_BACK, V1, finished=1_000.0)

    assert known_bad(again, [again, old, other, failed, promoted, different], since=500.0) is None


def test_a_replica_of_a_rolled_back_compose_service_makes_its_image_known_bad() -> None:
    replicas = ContainerSnapshot("api-1", "app:v3", "sha256:" + "3" * 64, {}, replicas=(V2,))
    rolled = _deployment("d1", DeploymentState.ROLLED_BACK, replicas, finished=1_000.0)
    again = _deployment("d2", DeploymentState.WATCHING, V2, started=2_000.0)

    mark = known_bad(again, [again, rolled], since=0.0)

    assert mark is not None and mark["image"] == "app:v2"


def test_a_holder_goes_once_nothing_can_roll_back_to_its_image() -> None:
    watching = _deployment("d1", DeploymentState.WATCHING, V2)
    assert not releasable(watching, newer=False)
    assert not releasable(_deployment("d1", DeploymentState.UNVERIFIED, V2), newer=False)
    assert not releasable(_deployment("d1", DeploymentState.ROLLBACK_FAILED, V2), newer=False)
    assert releasable(_deployment("d1", DeploymentState.ROLLBACK_FAILED, V2), newer=True)
    for state in (DeploymentState.PROMOTED, DeploymentState.ROLLED_BACK, DeploymentState.SUPERSEDED):
        assert releasable(_deployment("d1", state, V2), newer=False)
    assert releasable(None, newer=False)  # its deployment is gone from the store


def test_holder_names_are_valid_container_names() -> None:
    assert holder_name("api", "d1") == "watchdogd-keep-api-d1"
    assert holder_name("my svc/x", "a:b", 1) == "watchdogd-keep-my-svc-x-a-b-2"
