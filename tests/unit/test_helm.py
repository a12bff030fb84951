"""The Helm chart, rendered by tests/helmrender.py and checked as Kubernetes manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helmrender import render_chart
from watchdogd.auth import Tokens
from watchdogd.config import load_config_text

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "watchdogd"
SIDECAR = CHART / "values-sidecar.yaml"
STANDALONE = CHART / "values-standalone.yaml"
ALERTS = ROOT / "config" / "alerts" / "watchdogd-alerts.yaml"


def manifests(*values: Path) -> dict[str, dict[str, Any]]:
    """Rendered objects by kind (each kind appears once in this chart)."""
    found: dict[str, dict[str, Any]] = {}
    for name, text in render_chart(CHART, values).items():
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert doc["kind"] not in found, f"{name}: a second {doc['kind']}"
            assert doc["metadata"]["name"].startswith("release-watchdogd"), name
            found[doc["kind"]] = doc
    return found


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values-extra.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def container(objects: dict[str, dict[str, Any]], name: str = "watchdogd") -> dict[str, Any]:
    [found] = [
        c for c in objects["Deployment"]["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def loaded_config(objects: dict[str, dict[str, Any]]) -> Any:
    text = objects["ConfigMap"]["data"]["watchdogd.yaml"]
    return load_config_text(text, "watchdogd.yaml", base_dir=Path("/etc/watchdogd"))


# --- the chart -------------------------------------------------------------------------


def test_default_values_render_a_standalone_deployment() -> None:
    objects = manifests()
    assert set(objects) == {"Deployment", "ConfigMap", "Secret", "Service"}
    deployment = objects["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    assert objects["Service"]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["watchdogd"]
    main = container(objects)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert main["image"] == f"watchdogd:{chart['appVersion']}"
    assert main["args"] == ["run", "--config", "/etc/watchdogd/watchdogd.yaml"]
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == f"watchdogd-{chart['version']}"


def test_probes_hit_the_api_port() -> None:
    objects = manifests()
    main = container(objects)
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    [port] = main["ports"]
    assert port["name"] == "http"
    config = loaded_config(objects)
    # the kubelet probes the pod's IP: the API cannot listen on 127.0.0.1 here
    assert config.server.host == "0.0.0.0"
    assert port["containerPort"] == config.server.port == objects["Service"]["spec"]["ports"][0]["port"]
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert {"healthz", "readyz", "metrics"} <= set(config.server.open_endpoints)


def test_security_context_is_non_root_and_read_only() -> None:
    objects = manifests()
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    context = container(objects)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container(objects)["resources"]["limits"]["memory"]


def test_volumes_give_the_state_and_tmp_a_place_to_write() -> None:
    objects = manifests()
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container(objects)["volumeMounts"]}
    assert volumes["state"]["emptyDir"] == {}
    assert "emptyDir" in volumes["tmp"]
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert volumes["tokens"]["secret"]["secretName"] == objects["Secret"]["metadata"]["name"]
    assert mounts["/var/lib/watchdogd"]["name"] == "state"
    assert mounts["/tmp"]["name"] == "tmp"
    assert mounts["/etc/watchdogd/watchdogd.yaml"]["subPath"] == "watchdogd.yaml"
    config = loaded_config(objects)
    state = config.state.url.secret()
    assert state.startswith("sqlite:////var/lib/watchdogd/"), "the SQLite file must be on the state volume"
    assert str(config.server.tokens_file).startswith(mounts["/etc/watchdogd/tokens"]["mountPath"] + "/")


@pytest.mark.parametrize("values", [(), (STANDALONE,), (SIDECAR,)], ids=["defaults", "standalone", "sidecar"])
def test_configmap_and_secret_hold_what_watchdogd_loads(tmp_path: Path, values: tuple[Path, ...]) -> None:
    objects = manifests(*values)
    config = loaded_config(objects)
    assert bool(config.services) == bool(values)
    for service in config.services.values():
        assert "container" not in service.rollback.steps, "no Docker socket in a pod"
    assert all(source.type not in ("docker", "docker_logs") for source in config.sources.values())
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(objects["Secret"]["stringData"]["tokens.yaml"])
    Tokens.load(tokens_file)


def test_service_monitor_and_persistence_when_enabled(tmp_path: Path) -> None:
    extra = values_file(
        tmp_path,
        {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "persistence": {"enabled": True, "storageClassName": "fast"},
            "imagePullSecrets": ["regcred"],
            "image": {"tag": "1.2.3"},
        },
    )
    objects = manifests(extra)
    assert set(objects) == {
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceMonitor",
        "PersistentVolumeClaim",
    }
    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    claim = objects["PersistentVolumeClaim"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"] == {
        "name": "state",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(objects)["image"] == "watchdogd:1.2.3"


def test_standalone_values_watch_through_the_service() -> None:
    objects = manifests(STANDALONE)
    config = loaded_config(objects)
    assert set(config.services) == {"api"}
    assert config.services["api"].rollback.steps == ("webhook", "verify")
    assert "PersistentVolumeClaim" in objects
    assert [c["name"] for c in objects["Deployment"]["spec"]["template"]["spec"]["containers"]] == [
        "watchdogd"
    ]


def test_an_existing_tokens_secret_replaces_the_rendered_one(tmp_path: Path) -> None:
    objects = manifests(values_file(tmp_path, {"tokens": {"existingSecret": "ops-tokens"}}))
    assert "Secret" not in objects
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tokens"]["secret"]["secretName"] == "ops-tokens"


def test_sidecar_values_put_watchdogd_beside_the_app() -> None:
    objects = manifests(SIDECAR)
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "watchdogd"]
    config = loaded_config(objects)
    for service in config.services.values():
        # the app's container lives and dies with the pod: no container step
        assert "container" not in service.rollback.steps
        assert service.container is None
        assert set(service.rollback.steps) & {"sql", "webhook"}
    for source in config.sources.values():
        assert source.type not in ("docker", "docker_logs")
        url = getattr(source, "url", None)
        assert url is None or "127.0.0.1" in url.secret(), "in a pod the app is on localhost"
    # several replicas share one state so that only one of them acts, and the app upgrades in place
    assert objects["Deployment"]["spec"]["replicas"] > 1
    assert objects["Deployment"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert config.state.url.secret().startswith("postgresql://")
    env = {e["name"]: e for e in container(objects)["env"]}
    assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]
    ports = {p["name"]: p for p in objects["Service"]["spec"]["ports"]}
    assert ports["app"]["port"] == 8080
    assert ports["http"]["port"] == config.server.port


def _rules_by_alert(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_prometheus_rule_ships_the_rules_file(tmp_path: Path) -> None:
    extra = values_file(
        tmp_path,
        {"prometheusRule": {"enabled": True, "job": "watchdogd", "labels": {"release": "kube-prometheus"}}},
    )
    objects = manifests(extra)
    rule = objects["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "release"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_prometheus_rule_watches_the_job_the_service_monitor_scrapes(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    objects = manifests(extra)
    rendered = _rules_by_alert(objects["PrometheusRule"]["spec"]["groups"])
    shipped = _rules_by_alert(yaml.safe_load(ALERTS.read_text())["groups"])
    # the Prometheus Operator names a ServiceMonitor's job after the Service it selects
    job = objects["Service"]["metadata"]["name"]
    assert rendered["WatchdogdDown"]["expr"] == f'up{{job="{job}"}} == 0'
    assert shipped["WatchdogdDown"]["expr"] == 'up{job="watchdogd"} == 0'
    rendered["WatchdogdDown"]["expr"] = shipped["WatchdogdDown"]["expr"]
    assert rendered == shipped
    # Prometheus's templates reach it intact, not rendered (or refused) by Helm
    assert "{{ $labels.instance }}" in rendered["WatchdogdDown"]["annotations"]["summary"]
    assert '{{ $value | printf "%.0f" }}' in rendered["WatchdogdSourceErrors"]["annotations"]["description"]


def test_prometheus_rule_is_off_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["prometheusRule"]["enabled"] is False
    assert "PrometheusRule" not in manifests()


def test_the_chart_sets_the_api_bounds_and_they_load() -> None:
    configmap = manifests()["ConfigMap"]
    text = next(iter(configmap["data"].values()))
    server = yaml.safe_load(text)["server"]
    assert server["max_connections"] >= 64 and server["max_streams"] >= 1
    assert server["header_timeout"] and server["keepalive_timeout"]
    config = load_config_text(text.replace("/etc/watchdogd/tokens/tokens.yaml", "tokens.yaml"), "chart.yaml")
    assert config.server.max_streams_per_token <= config.server.max_streams


def test_secrets_are_mounted_from_secrets_and_never_written_into_the_configmap(tmp_path: Path) -> None:
    config = {
        "sources": {"db": {"type": "postgres", "dsn_file": "/etc/watchdogd/secrets/app-db/dsn"}},
        "services": {},
    }
    objects = manifests(values_file(tmp_path, {"secretMounts": [{"name": "app-db"}], "config": config}))
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secret-app-db"] == {"name": "secret-app-db", "secret": {"secretName": "app-db"}}
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["secret-app-db"]["mountPath"] == "/etc/watchdogd/secrets/app-db"
    assert mounts["secret-app-db"]["readOnly"] is True
    text = objects["ConfigMap"]["data"]["watchdogd.yaml"]
    assert "dsn_file: /etc/watchdogd/secrets/app-db/dsn" in text
    # what the pod reads: the file the Secret puts there, never a value in the ConfigMap
    secret = tmp_path / "app-db"
    secret.mkdir()
    (secret / "dsn").write_text("postgresql://app:pw@127.0.0.1/app\n")
    loaded = load_config_text(text.replace("/etc/watchdogd/secrets/app-db", str(secret)), "w.yaml", tmp_path)
    assert loaded.sources["db"].dsn.secret() == "postgresql://app:pw@127.0.0.1/app"
