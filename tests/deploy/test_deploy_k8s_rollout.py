"""What a second `kubectl apply -k` does to a running deployment, read from real `kubectl kustomize` renders.

A pod reads its SEGMENT_* settings only when it starts, so a settings change must change the pod template (else the
apply leaves every pod on the old values, and later restarts mix old and new). The HPA owns the replica count, so
the Deployment must not state one (else every apply scales it back). The queue-depth HPA must be something the
apply renders (else the next apply of the base turns the autoscaler back to CPU, as both are the HPA `segment`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from .tools import K8S, QUEUE_DEPTH, require_tool


def render(path: Path) -> list[dict]:
    """The objects `kubectl apply -k <path>` would send."""
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def pod_config_map(objects: list[dict]) -> dict:
    """The ConfigMap the Deployment's pods take their environment from."""
    (ctr,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    (name,) = [ref["configMapRef"]["name"] for ref in ctr["envFrom"] if "configMapRef" in ref]
    (cm,) = [obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == name]
    return cm


def test_a_settings_change_rolls_the_pods(tmp_path: Path) -> None:
    before = render(K8S)
    batch = pod_config_map(before)["data"]["SEGMENT_MAX_BATCH_SIZE"]
    changed = str(int(batch) // 2)
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    edited = 0
    for path in work.iterdir():  # wherever the base states the setting
        if path.is_file():
            text = path.read_text()
            new = re.sub(rf"^(\s*SEGMENT_MAX_BATCH_SIZE\s*[:=]\s*\"?){batch}\b", rf"\g<1>{changed}", text, flags=re.M)
            edited += new != text
            path.write_text(new)
    assert edited == 1, "the batch size is stated once in the base"
    after = render(work)
    assert pod_config_map(after)["data"]["SEGMENT_MAX_BATCH_SIZE"] == changed
    template = [one(objs, "Deployment")["spec"]["template"] for objs in (before, after)]
    assert template[0] != template[1], "a settings change must change the pod template, or no pod is replaced"
    # The old ConfigMap keeps its name and values: pods still starting from the old ReplicaSet (and a rollback) get
    # the settings they were made with.
    assert pod_config_map(before)["metadata"]["name"] != pod_config_map(after)["metadata"]["name"]


def test_the_hpa_alone_sets_the_replica_count() -> None:
    for path in (K8S, QUEUE_DEPTH):
        objects = render(path)
        deployment, hpa = one(objects, "Deployment"), one(objects, "HorizontalPodAutoscaler")
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"], \
            f"{path.name}: an HPA scales this Deployment; a replica count in it is reset on every apply"


def test_the_queue_depth_variant_is_an_overlay_of_the_base() -> None:
    base, overlay = render(K8S), render(QUEUE_DEPTH)
    (metric,) = one(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]
    values = yaml.safe_load((QUEUE_DEPTH / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    # Everything else is the base, object for object.
    assert [o for o in overlay if o["kind"] != "HorizontalPodAutoscaler"] == \
           [o for o in base if o["kind"] != "HorizontalPodAutoscaler"]
    base_hpa, overlay_hpa = one(base, "HorizontalPodAutoscaler"), one(overlay, "HorizontalPodAutoscaler")
    assert overlay_hpa["metadata"] == base_hpa["metadata"]
    assert {**overlay_hpa["spec"], "metrics": None} == {**base_hpa["spec"], "metrics": None}
