"""The Dockerfiles: hadolint, multi-stage, non-root, HEALTHCHECK on /healthz, pinned versions.

No Docker engine runs here, so nothing is built: these check the files with real linters and parsers,
and test_deploy_entrypoint.py runs the CPU image's command line for real.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .tools import DOCKER, DOCKERFILES, REPO, dockerfile, exec_form, final_stage, healthcheck_argv, require_tool

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3-dev|\S+-dev)\b")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(name: str) -> None:
    hadolint = require_tool("hadolint")
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILES[name])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path) -> None:
    """The linter is live: an unpinned, root, apt-without-cleanup Dockerfile must be flagged."""
    hadolint = require_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nCMD segment-serve\n")
    out = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015"):
        assert rule in out.stdout, out.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multistage_nonroot_healthcheck(name: str) -> None:
    df = dockerfile(name)
    froms = [ins for ins in df.structure if ins["instruction"] == "FROM"]
    assert len(froms) >= 3, "multi-stage: model, build and runtime stages"
    last = final_stage(df)
    users = [ins["value"] for ins in last if ins["instruction"] == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert healthcheck_argv(df)[0] == "python"
    assert "/healthz" in " ".join(healthcheck_argv(df))
    assert exec_form(df.cmd) == ["segment-serve"]
    assert df.envs["SEGMENT_PORT"] == "8000" and df.envs["SEGMENT_HOST"] == "0.0.0.0"
    assert any(ins["instruction"] == "EXPOSE" and ins["value"] == df.envs["SEGMENT_PORT"] for ins in last)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_has_no_build_tools(name: str) -> None:
    """The runtime stage installs nothing from source: only interpreter packages, the rest is copied in."""
    for ins in final_stage(dockerfile(name)):
        if ins["instruction"] == "RUN":
            assert "pip install" not in ins["value"], ins["value"]
            assert not BUILD_TOOLS.search(ins["value"]), ins["value"]
        if ins["instruction"] == "COPY":
            assert ins["value"].startswith("--from="), f"runtime stage copies only from other stages: {ins}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_pip_installs_are_pinned(name: str) -> None:
    """Every pip install uses a generated constraints file or an exact == pin."""
    text = DOCKERFILES[name].read_text()
    installs = [ins["value"] for ins in dockerfile(name).structure
                if ins["instruction"] == "RUN" and "pip install" in ins["value"]]
    assert installs
    for run in installs:
        for cmd in run.split("&&"):
            if "pip install" not in cmd:
                continue
            pinned = "--constraint" in cmd or "--requirement" in cmd or "--no-deps ." in cmd
            assert pinned, cmd
    for ref in re.findall(r"docker/(constraints-\w+\.txt)", text):
        assert (DOCKER / ref).is_file(), ref
    for base in re.findall(r"^ARG (?:PYTHON|CUDA)_IMAGE=(\S+)", text, re.M):
        tag = base.split(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"base image not pinned: {base}"


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize(("constraints", "extras"), [("constraints-serve.txt", ("serve",)),
                                                     ("constraints-export.txt", ("serve", "export"))])
def test_constraints_cover_the_extras(constraints: str, extras: tuple[str, ...]) -> None:
    """Each requirement of the image's extras is pinned, and the pin satisfies pyproject's specifier.

    Fails when someone adds a dependency without rerunning docker/gen_constraints.py.
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins(DOCKER / constraints)
    reqs = [Requirement(r) for r in project["dependencies"]]
    todo = list(extras)
    while todo:  # an extra may name others of this project (serve = segment-service[core] + ...)
        for req in map(Requirement, project["optional-dependencies"][todo.pop()]):
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo += req.extras
            else:
                reqs.append(req)
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} missing from docker/{constraints}: run docker/gen_constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{req} not satisfied by pin {pins[name]} in docker/{constraints}"
    assert "torch" not in _pins(DOCKER / "constraints-serve.txt"), "the serving images never carry torch"


def test_gpu_image_swaps_in_onnxruntime_gpu() -> None:
    text = DOCKERFILES["gpu"].read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-cudnn-runtime-", text, re.M)
    assert re.search(r"^ARG ORT_GPU_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert "sed '/^onnxruntime==/d'" in text, "CPU onnxruntime must not be installed beside onnxruntime-gpu"
    assert "CUDAExecutionProvider" in text, "the build checks that the CUDA provider is present"
    assert dockerfile("gpu").envs["SEGMENT_REQUIRE_GPU"] == "true"


def test_dockerignore_keeps_context_small() -> None:
    lines = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "**", "deny everything first, then allow-list what the images need"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    # Everything the Dockerfiles COPY from the context is allow-listed.
    for path in DOCKERFILES.values():
        for ins in dockerfile(path.name.split(".")[1]).structure:
            if ins["instruction"] != "COPY" or ins["value"].startswith("--from="):
                continue
            sources = [s for s in ins["value"].split()[:-1] if not s.startswith("--")]
            for src in sources:
                top = src.split("/")[0]
                assert src in allowed or top in allowed or \
                    any(re.fullmatch(a.replace("*", ".*"), src) for a in allowed), f"{src} is excluded"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_shipped_venv_has_no_pip(name: str) -> None:
    """The stage whose venv the runtime copies removes pip after its last install: a runtime user (uid 10001)
    cannot install into the root-owned venv anyway, and pip is one more package for scanners to flag."""
    structure = dockerfile(name).structure
    (copy,) = [ins["value"] for ins in final_stage(dockerfile(name)) if ins["instruction"] == "COPY"
               and ins["value"].split()[-2:] == ["/opt/venv", "/opt/venv"]]
    source = copy.split()[0].removeprefix("--from=")
    start = next(i for i, ins in enumerate(structure)
                 if ins["instruction"] == "FROM" and ins["value"].split()[-1] == source)
    end = next((i for i, ins in enumerate(structure[start + 1:], start + 1) if ins["instruction"] == "FROM"),
               len(structure))
    commands = [cmd.strip() for ins in structure[start:end] if ins["instruction"] == "RUN"
                for cmd in ins["value"].split("&&") if "pip" in cmd]
    assert commands and commands[-1] == "/opt/venv/bin/pip uninstall --yes pip", commands


def test_the_documented_gpu_wheel_check_installs_what_the_gpu_image_installs() -> None:
    """docs/DEPLOY.md's hand check of the GPU image's wheel set names the versions Dockerfile.gpu pins."""
    text = DOCKERFILES["gpu"].read_text()
    pins = dict(re.findall(r"^ARG (ORT_GPU|NVML)_VERSION=(\S+)$", text, re.M))
    assert set(pins) == {"ORT_GPU", "NVML"}, pins
    doc = (REPO / "docs" / "DEPLOY.md").read_text().split("Checked by hand", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", doc, re.S).group(1)
    assert f"onnxruntime-gpu=={pins['ORT_GPU']}" in block and f"nvidia-ml-py=={pins['NVML']}" in block, block
    assert "--python-version 3.12" in block  # Ubuntu 24.04's Python, the GPU image's interpreter
