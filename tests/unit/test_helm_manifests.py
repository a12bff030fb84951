"""The chart's values schema, names, labels, checksums, PodDisruptionBudget and NOTES, and its manifests
checked against the Kubernetes API schemas (kubernetes-validate's bundled ones, no cluster needed)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helmrender import TemplateError, chart_values, render_chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "watchdogd"
SIDECAR = CHART / "values-sidecar.yaml"
STANDALONE = CHART / "values-standalone.yaml"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
OLDEST = re.fullmatch(r">=(\d+\.\d+)\.0-0", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"])
# a label value: at most 63 characters, alphanumerics at both ends, - _ . inside
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def docs(*values: Path, release: str = "release") -> list[dict[str, Any]]:
    found = []
    for text in render_chart(CHART, values, release=release).values():
        found.extend(doc for doc in yaml.safe_load_all(text) if doc is not None)
    return found


def by_kind(*values: Path, release: str = "release") -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs(*values, release=release)}


def extra(tmp_path: Path, values: dict[str, Any], name: str = "extra") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def annotations(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(objects["Deployment"]["spec"]["template"]["metadata"]["annotations"])


# --- values.schema.json ---------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), (SIDECAR,), (STANDALONE,)], ids=["defaults", "sidecar", "standalone"])
def test_the_shipped_values_meet_the_schema(values: tuple[Path, ...]) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    merged = chart_values(CHART, values)
    jsonschema.Draft7Validator(SCHEMA).validate(merged)
    # and every key of values.yaml is described, so that additionalProperties catches typos
    assert set(yaml.safe_load((CHART / "values.yaml").read_text())) <= set(SCHEMA["properties"])


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"service": {"port": "9464"}}, "service.port"),
        ({"replicas": 2}, "(root)"),  # a typo of replicaCount
        ({"podDisruptionBudget": {"enabled": "yes"}}, "podDisruptionBudget.enabled"),
        ({"secretMounts": [{"name": "App_DB"}]}, "secretMounts.0.name"),
        ({"image": {"pullPolicy": "always"}}, "image.pullPolicy"),
        ({"config": {"state": {"url": 5}}}, "config.state.url"),
    ],
)
def test_a_wrong_value_is_refused_before_anything_renders(
    tmp_path: Path, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(TemplateError, match="values don't meet the schema") as refused:
        render_chart(CHART, (extra(tmp_path, values),))
    assert f"- {where}:" in str(refused.value)


# --- names and labels -----------------------------------------------------------------------


def names(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {doc["kind"]: doc["metadata"]["name"] for doc in objects}


def test_every_name_and_label_is_one_kubernetes_accepts(tmp_path: Path) -> None:
    everything = extra(
        tmp_path,
        {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "persistence": {"enabled": True},
        },
    )
    release = "release-name-of-fifty-three-characters-helms-limit-x1"
    assert len(release) == 53
    for objects in (docs(everything, release=release), docs(SIDECAR, everything, release=release)):
        for doc in objects:
            name = doc["metadata"]["name"]
            assert len(name) <= 63 and DNS_LABEL.fullmatch(name), (doc["kind"], name)
            labels = doc["metadata"]["labels"]
            assert {
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            } <= set(labels), doc["kind"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            for value in labels.values():
                assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), (doc["kind"], value)
    long_names = names(docs(everything, release=release))
    assert long_names["Secret"] == f"{release}-watchdogd-tokens"[:63].rstrip("-")
    assert long_names["PersistentVolumeClaim"] == f"{release}-watchdogd-state"[:63].rstrip("-")


def test_full_name_override_is_cut_at_63_without_a_trailing_dash(tmp_path: Path) -> None:
    override = "x" * 62 + "-yz"
    objects = docs(extra(tmp_path, {"fullnameOverride": override}))
    found = names(objects)
    assert found["Deployment"] == "x" * 62
    assert found["ConfigMap"] == found["Service"] == found["Deployment"]
    assert found["Secret"] == ("x" * 62 + "-tokens")[:63].rstrip("-")
    deployment = next(doc for doc in objects if doc["kind"] == "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == found["ConfigMap"]
    assert volumes["tokens"]["secret"]["secretName"] == found["Secret"]


def test_name_override_renames_objects_and_their_selector(tmp_path: Path) -> None:
    objects = by_kind(extra(tmp_path, {"nameOverride": "guard", "commonLabels": {"team": "sre"}}))
    assert objects["Deployment"]["metadata"]["name"] == "release-guard"
    selector = objects["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "guard", "app.kubernetes.io/instance": "release"}
    assert objects["Service"]["spec"]["selector"] == selector
    assert objects["Deployment"]["spec"]["template"]["metadata"]["labels"] == selector
    assert all(doc["metadata"]["labels"]["team"] == "sre" for doc in objects.values())


def test_a_release_named_after_the_chart_is_not_named_twice() -> None:
    assert set(names(docs(release="watchdogd")).values()) == {"watchdogd", "watchdogd-tokens"}
    assert names(docs(release="prod-watchdogd"))["Deployment"] == "prod-watchdogd"


# --- a config change rolls the pods ---------------------------------------------------------


def test_the_pod_template_carries_the_config_checksum(tmp_path: Path) -> None:
    rendered = render_chart(CHART)
    objects = by_kind()
    # what Helm's include gives: the rendered template, before any parsing
    assert (
        annotations(objects)["checksum/config"]
        == hashlib.sha256(rendered["configmap.yaml"].encode()).hexdigest()
    )
    assert (
        annotations(objects)["checksum/tokens"]
        == hashlib.sha256(rendered["secret.yaml"].encode()).hexdigest()
    )


def test_a_config_change_rolls_the_pods_and_nothing_else_does(tmp_path: Path) -> None:
    before = annotations(by_kind(STANDALONE))
    interval = extra(tmp_path, {"config": {"defaults": {"interval": "30s"}}}, "interval")
    after = annotations(by_kind(STANDALONE, interval))
    assert after["checksum/config"] != before["checksum/config"]
    assert after["checksum/tokens"] == before["checksum/tokens"]
    token = {
        "tokens": {
            "content": {"tokens": [{"name": "ops", "role": "operator", "token": "sha256:" + "0" * 64}]}
        }
    }
    assert (
        annotations(by_kind(STANDALONE, extra(tmp_path, token, "tokens")))["checksum/tokens"]
        != before["checksum/tokens"]
    )
    unrelated = extra(
        tmp_path, {"resources": {"limits": {"memory": "512Mi"}}, "podAnnotations": {"a": "b"}}, "other"
    )
    same = annotations(by_kind(STANDALONE, unrelated))
    assert same == {**before, "a": "b"}
    # an existing Secret is not the chart's to hash
    existing = annotations(
        by_kind(STANDALONE, extra(tmp_path, {"tokens": {"existingSecret": "ops"}}, "existing"))
    )
    assert set(existing) == {"checksum/config"}


# --- PodDisruptionBudget --------------------------------------------------------------------


def test_one_replica_has_no_disruption_budget_and_several_have_one() -> None:
    assert "PodDisruptionBudget" not in by_kind()
    objects = by_kind(SIDECAR)
    budget = objects["PodDisruptionBudget"]
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    assert (
        budget["spec"]["selector"]["matchLabels"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize(
    ("values", "spec"),
    [
        ({"podDisruptionBudget": {"enabled": True}}, {"maxUnavailable": 1}),
        ({"podDisruptionBudget": {"enabled": False}}, None),
        ({"podDisruptionBudget": {"minAvailable": "50%"}}, {"minAvailable": "50%"}),
        (
            {"podDisruptionBudget": {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}},
            {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"},
        ),
    ],
)
def test_the_disruption_budget_follows_its_values(
    tmp_path: Path, values: dict[str, Any], spec: dict[str, Any] | None
) -> None:
    objects = by_kind(SIDECAR, extra(tmp_path, values))
    if spec is None:
        assert "PodDisruptionBudget" not in objects
        return
    found = dict(objects["PodDisruptionBudget"]["spec"])
    found.pop("selector")
    assert found == spec


def test_several_replicas_on_sqlite_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="postgresql://"):
        render_chart(CHART, (STANDALONE, extra(tmp_path, {"replicaCount": 2})))


# --- NOTES.txt ------------------------------------------------------------------------------


def notes(*values: Path) -> str:
    return render_chart(CHART, values, release="guard", namespace="ops", notes=True)["NOTES.txt"]


def test_notes_tell_how_to_reach_the_api_and_warn_of_an_empty_config(tmp_path: Path) -> None:
    text = notes()
    assert "kubectl --namespace ops port-forward service/guard-watchdogd 9464:9464" in text
    assert "http://127.0.0.1:9464/ui" in text
    assert "config.services is empty" in text
    assert "no API tokens" in text
    assert "SQLite on an emptyDir" in text
    quiet = notes(STANDALONE, extra(tmp_path, {"tokens": {"existingSecret": "ops-tokens"}}))
    assert "WARNING" not in quiet and "emptyDir" not in quiet
    assert "sidecar" in notes(SIDECAR) and "PodDisruptionBudget" not in notes(SIDECAR)


# --- the Kubernetes API schemas -------------------------------------------------------------

# the oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest the validator knows
VERSIONS = (OLDEST.group(1) if OLDEST else "", kubernetes_validate.latest_version())
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def validate(doc: dict[str, Any], version: str) -> None:
    if (doc["apiVersion"], doc["kind"]) in CUSTOM:
        # the Prometheus Operator's kinds are not in the API's schemas: their metadata is checked
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", [(), (SIDECAR,), (STANDALONE,)], ids=["defaults", "sidecar", "standalone"])
def test_rendered_manifests_meet_the_kubernetes_api_schemas(
    tmp_path: Path, values: tuple[Path, ...], version: str
) -> None:
    assert version, "Chart.yaml's kubeVersion is >=X.Y.0-0"
    everything = extra(
        tmp_path,
        {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "podDisruptionBudget": {"enabled": True},
            "imagePullSecrets": ["regcred"],
            "secretMounts": [{"name": "app-db"}],
            "podAnnotations": {"example.com/team": "sre"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
            ],
        },
    )
    for value_files in (values, (*values, everything)):
        objects = docs(*value_files)
        assert {"Deployment", "Service", "ConfigMap"} <= {doc["kind"] for doc in objects}
        for doc in objects:
            validate(doc, version)


def test_the_validator_catches_what_the_api_server_would_refuse() -> None:
    deployment = by_kind()["Deployment"]
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, VERSIONS[1])
    misplaced = copy.deepcopy(deployment)
    misplaced["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo of volumeMounts
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(misplaced, VERSIONS[1])
    validate(deployment, VERSIONS[1])
