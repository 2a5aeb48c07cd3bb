"""docs/DEPLOY.md's Kubernetes steps, read as a new user runs them: in an order that works, with names that match
the manifests, and the kubectl-only way of choosing the image checked with a real `kubectl kustomize` render. The
queue-depth HPA's target is one full batch of the ConfigMap's batch size, in the manifest and in the docs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .tools import K8S, QUEUE_DEPTH, REPO, require_tool

DEPLOY_MD = REPO / "docs" / "DEPLOY.md"


def load_one(path: Path, kind: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def steps() -> list[list[str]]:
    """The commands of the Kubernetes section's first bash block, as argv lists (comments dropped)."""
    section = DEPLOY_MD.read_text().split("### Kubernetes", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines()
            if shlex.split(line, comments=True)]


def index(steps: list[list[str]], *words: str) -> int:
    """The position of the one step whose words include all of `words`."""
    (found,) = [i for i, argv in enumerate(steps) if all(w in argv for w in words)]
    return found


def test_steps_run_in_an_order_that_works(steps: list[list[str]]) -> None:
    image = index(steps, "edit", "set", "image")
    namespace = index(steps, "kubectl", "apply", "-f")
    secret = index(steps, "create", "secret")
    apply = index(steps, "kubectl", "apply", "-k")
    rollout = index(steps, "rollout", "status")
    # The image before the apply (an edit after it never reaches the cluster), and the Secret before any pod starts
    # (it is optional: a pod that starts first runs with auth off, and reads it only on its next start).
    assert image < apply and namespace < secret < apply < rollout
    assert not any(argv[:3] == ["kubectl", "kustomize", "edit"] for argv in steps), "no such kubectl command"


def test_steps_name_what_the_manifests_name(steps: list[list[str]]) -> None:
    namespace = load_one(K8S / "namespace.yaml", "Namespace")["metadata"]["name"]
    ns_step = steps[index(steps, "kubectl", "apply", "-f")]
    assert (REPO / ns_step[-1]).resolve() == (K8S / "namespace.yaml").resolve()
    for argv in steps:
        if argv[0] == "kubectl" and "-n" in argv:
            assert argv[argv.index("-n") + 1] == namespace, argv
    (ctr,) = load_one(K8S / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in ctr["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    secret = steps[index(steps, "create", "secret")]
    # One Secret holds the API keys and, optionally, the offline jobs' bulk keys; without it, auth is off.
    assert {ref["name"] for ref in refs} == {secret[secret.index("generic") + 1]}
    assert [ref["key"] for ref in refs] == ["SEGMENT_API_KEYS", "SEGMENT_BULK_API_KEYS"]
    assert all(ref.get("optional") for ref in refs)
    assert any(a.startswith("--from-literal=SEGMENT_API_KEYS=") for a in secret), secret
    image_step = steps[index(steps, "edit", "set", "image")]
    name = image_step[-1].split("=", 1)[0]
    (entry,) = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]
    assert name == entry["name"] == ctr["image"].split(":", 1)[0]


def test_editing_images_in_kustomization_sets_the_deployed_image(steps: list[list[str]], tmp_path: Path) -> None:
    """The way that needs only kubectl: newName/newTag under `images:` before the apply, rendered for real."""
    kubectl = require_tool("kubectl")
    wanted = steps[index(steps, "edit", "set", "image")][-1].split("=", 1)[1]
    new_name, new_tag = wanted.rsplit(":", 1)
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    kustomization = yaml.safe_load((work / "kustomization.yaml").read_text())
    kustomization["images"][0].update(newName=new_name, newTag=new_tag)
    (work / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    out = subprocess.run([kubectl, "kustomize", str(work)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (dep,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    assert [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]] == [wanted]


def test_queue_depth_target_is_one_batch_of_the_configmap() -> None:
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(QUEUE_DEPTH)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    (config,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    batch = int(config["data"]["SEGMENT_MAX_BATCH_SIZE"])
    (hpa,) = [d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert int(metric["pods"]["target"]["averageValue"]) == batch
    (row,) = [line for line in DEPLOY_MD.read_text().splitlines() if line.startswith("| `deploy/k8s-queue-depth")]
    assert [int(n) for n in re.findall(r"average of (\d+) queued images", row)] == [batch], row
