"""deploy/k8s: every document parses, and its references are consistent with the code.

Checked without a cluster: kinds and API versions, the StatefulSet's selector
against its pod labels and the Service's selector, the headless Service the
StatefulSet names, the volume per worker mounted at LOYALTY_DATA_DIR, probe
paths that exist in the worker's web app (built for real, memory store), and
every LOYALTY_* variable against the settings model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert {"apiVersion", "kind"} <= set(doc), path
                key = doc["kind"] if doc["kind"] == "Kustomization" else \
                    f"{doc['kind']}/{doc['metadata']['name']}"
                assert key not in docs, f"{key} defined twice"
                docs[key] = doc
    return docs


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _docs()


@pytest.fixture(scope="module")
def worker(docs) -> dict[str, Any]:
    return docs["StatefulSet/loyalty-scorer"]


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def test_kinds_and_api_versions(docs) -> None:
    assert {k: d["apiVersion"] for k, d in docs.items()} == {
        "ConfigMap/loyalty-scorer": "v1",
        "Service/loyalty-scorer": "v1",
        "StatefulSet/loyalty-scorer": "apps/v1",
        "Kustomization": "kustomize.config.k8s.io/v1beta1",
    }
    assert sorted(docs["Kustomization"]["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_selectors_match_labels_and_the_headless_service(docs, worker) -> None:
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    selector = worker["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = docs[f"Service/{worker['spec']['serviceName']}"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in _container(worker)["ports"]}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])


def test_one_volume_per_worker_mounted_at_the_data_dir(docs, worker) -> None:
    claims = {c["metadata"]["name"] for c in worker["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in _container(worker)["volumeMounts"]}
    assert "data" in claims and mounts["data"] == \
        docs["ConfigMap/loyalty-scorer"]["data"]["LOYALTY_DATA_DIR"]


def test_probes_hit_health_routes_of_the_real_web_app(worker) -> None:
    from streams.app import create_service

    service = create_service(Settings(store="memory://"), sweep_enabled=False)
    routes = set(service.app.web.views)
    container = _container(worker)
    port_names = {p["name"] for p in container["ports"]}
    probes = {name: container[name] for name in ("livenessProbe", "readinessProbe",
                                                  "startupProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for name, probe in probes.items():
        assert probe["httpGet"]["path"] in routes, (name, sorted(routes))
        assert probe["httpGet"]["port"] in port_names
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes


def test_every_env_name_is_a_setting_and_the_config_validates(docs, worker) -> None:
    fields = set(Settings.model_fields)
    config = docs["ConfigMap/loyalty-scorer"]["data"]
    container = _container(worker)
    names = set(config) | {e["name"] for e in container["env"]}
    loyalty = {n for n in names if n.startswith("LOYALTY_")}
    unknown = sorted(n for n in loyalty if n[len("LOYALTY_"):].lower() not in fields)
    assert unknown == [], unknown
    assert names - loyalty == {"POD_IP"}  # the only helper variable
    # The ConfigMap's values pass the settings model (with the Secret's password).
    kw = {k[len("LOYALTY_"):].lower(): v for k, v in config.items()}
    s = Settings(**kw, sasl_password="from-the-secret")
    assert s.security_protocol == "SASL_SSL" and s.data_dir == Path("/data")
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
               if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(secrets) == {"LOYALTY_API_TOKEN", "LOYALTY_SASL_PASSWORD"}
    assert "LOYALTY_SASL_PASSWORD" not in config and "LOYALTY_API_TOKEN" not in config
