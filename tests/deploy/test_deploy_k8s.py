"""Kubernetes manifests: strict validation against the Kubernetes JSON schemas (kubernetes-validate ships
them; no cluster or network needed), the kustomize render, and cross-references between the objects."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml
from kubernetes_validate import utils as kv

from service.settings import Settings

from .tools import K8S, QUEUE_DEPTH, dockerfile, final_stage, require_tool

# Files that are not Kubernetes objects (kustomize input, Helm values) are checked separately.
NOT_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
MANIFESTS = sorted(p for root in (K8S, QUEUE_DEPTH) for p in root.rglob("*.yaml") if p.name not in NOT_OBJECTS)


def load(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(obj: dict) -> None:
    """Strict schema validation (unknown fields are errors) for the newest Kubernetes the package knows."""
    kv.validate(obj, kv.latest_version(), strict=True)


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    """kind -> object, for the base manifests (not the overlay), as kustomize renders them (the ConfigMap is made
    from settings.env there)."""
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = {}
    for doc in yaml.safe_load_all(out.stdout):
        if doc:
            assert doc["kind"] not in found, f"one {doc['kind']} in the base"
            found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S.parent)))
def test_manifest_matches_the_kubernetes_schema(path) -> None:
    docs = load(path)
    assert docs
    for doc in docs:
        validate(doc)


def test_validator_rejects_mistakes(objects: dict[str, dict]) -> None:
    """The validator is live: a misspelt probe field and a wrong type are rejected."""
    dep = copy.deepcopy(objects["Deployment"])
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kv.ValidationError):
        validate(dep)
    dep = copy.deepcopy(objects["Deployment"])
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        validate(dep)


def test_kustomize_renders_every_base_object() -> None:
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget"])
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "segment"


def test_deployment_gpu_probes_and_security(objects: dict[str, dict]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    res = ctr["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and res["requests"]["nvidia.com/gpu"] == 1
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz?overload=ready"  # overload keeps it in
    assert ctr["startupProbe"]["httpGet"]["path"] == "/healthz"
    startup = ctr["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load + warm-up need time"
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The pod's uid is the image's USER.
    users = [i["value"] for i in final_stage(dockerfile("gpu")) if i["instruction"] == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == users[-1].split(":")[0]
    assert any(m["mountPath"] == "/tmp" for m in ctr["volumeMounts"]), "read-only root needs a writable /tmp"


def test_objects_reference_each_other(objects: dict[str, dict]) -> None:
    dep, svc, cm = objects["Deployment"], objects["Service"], objects["ConfigMap"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    pdb_min = objects["PodDisruptionBudget"]["spec"]["minAvailable"]
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] > pdb_min, "drains must stay possible"
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    assert ctr["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    (port,) = ctr["ports"]
    assert str(port["containerPort"]) == cm["data"]["SEGMENT_PORT"]
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]


def test_configmap_holds_real_settings(objects: dict[str, dict]) -> None:
    data = objects["ConfigMap"]["data"]
    fields = {f"SEGMENT_{f.upper()}" for f in Settings.model_fields}
    assert set(data) <= fields, f"unknown settings: {set(data) - fields}"
    settings = Settings(**{k.removeprefix("SEGMENT_").lower(): v for k, v in data.items()})
    assert settings.require_gpu is True and settings.max_upload_bytes == 20 * 1024 * 1024


def test_queue_depth_hpa_matches_the_adapter_rule() -> None:
    (hpa,) = load(QUEUE_DEPTH / "hpa-queue-depth.yaml")
    (metric,) = hpa["spec"]["metrics"]
    values = yaml.safe_load((QUEUE_DEPTH / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "segment_queue_depth" in rule["seriesQuery"]
