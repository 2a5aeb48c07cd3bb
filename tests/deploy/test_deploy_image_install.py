"""Replay the CPU image's build stage without Docker: its COPY lines and RUN lines, executed on this
machine under a scratch root, then its runtime CMD from the venv that build produced.

This proves what `docker build` would prove about the Python layer: the constraints file is complete and
consistent (`pip check`), the non-editable install works from only the files the Dockerfile copies (no repo
checkout beside it), pip is gone, torch is absent, and the installed `segment-serve` reaches /readyz.
The OS layer (the base image, apt) is not exercised: no Docker engine runs here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .service_proc import start_image_command
from .tools import REPO, dockerfile

# Container paths the build stage uses, rebased under the scratch root.
CONTAINER_PATH = re.compile(r"(?<![\w.$/-])/(opt|tmp|src)(?=/|\b)")


def build_stage(name: str) -> list[dict]:
    """Instructions of the stage named `build`."""
    structure = dockerfile(name).structure
    start = next(i for i, ins in enumerate(structure)
                 if ins["instruction"] == "FROM" and ins["value"].split()[-1] == "build")
    end = next((i for i, ins in enumerate(structure[start + 1:], start + 1) if ins["instruction"] == "FROM"),
               len(structure))
    return structure[start:end]


def replay(name: str, root: Path) -> Path:
    """Execute the build stage's WORKDIR/COPY/RUN/ENV under `root`; return the rebased /opt/venv."""
    def rebase(text: str) -> str:
        return CONTAINER_PATH.sub(lambda m: f"{root}/{m.group(1)}", text)

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root)}
    workdir = root
    for ins in build_stage(name)[1:]:
        kind, value = ins["instruction"], ins["value"]
        if kind == "WORKDIR":
            workdir = Path(rebase(value))
            workdir.mkdir(parents=True, exist_ok=True)
        elif kind == "ENV":
            for key, val in re.findall(r"(\w+)=(\S+)", value):
                env[key] = val
        elif kind == "COPY":
            *sources, dest = value.split()
            target = Path(rebase(dest)) if dest.startswith("/") else workdir / dest
            for src in sources:
                src_path = REPO / src
                out = target / src_path.name if dest.endswith("/") or len(sources) > 1 else target
                out.parent.mkdir(parents=True, exist_ok=True)
                if src_path.is_dir():
                    shutil.copytree(src_path, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copyfile(src_path, out)
        elif kind == "RUN":
            # The base image's `python` is the same minor version as the interpreter running the tests.
            command = rebase(value).replace("python -m venv", f"{sys.executable} -m venv")
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=env,
                                 capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, f"RUN {value}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        elif kind not in ("COMMENT", "ARG", "LABEL"):
            pytest.fail(f"replay does not handle {kind} in the build stage")
    return root / "opt" / "venv"


@pytest.mark.slow
def test_cpu_image_build_stage_and_cmd(tiny_onnx_model: Path, tmp_path: Path) -> None:
    venv = replay("cpu", tmp_path / "root")
    bin_dir = venv / "bin"
    assert (bin_dir / "segment-serve").is_file()
    assert not (bin_dir / "pip").exists(), "the build stage removes pip from the shipped venv"
    # The licence the package declares ships in the image (a build without it is deprecated by setuptools).
    (licence,) = venv.glob("lib/python*/site-packages/segment_service-*.dist-info/licenses/LICENSE")
    assert licence.read_bytes() == (REPO / "LICENSE").read_bytes()
    # Every command the image carries runs (segment-export's package is not in a serving image: not carried).
    commands = sorted(path.name for path in bin_dir.glob("segment*"))
    assert commands == ["segment", "segment-serve", "segment-webcam"], commands
    for command in commands:
        ran = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and "usage:" in ran.stdout, (command, ran.stderr[-2000:])
    probe = subprocess.run([str(bin_dir / "python"), "-c",
                            "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "True", "the serving image must not carry torch"

    workdir = tmp_path / "run"
    workdir.mkdir()
    svc = start_image_command("cpu", tiny_onnx_model, workdir, venv_bin=bin_dir)
    try:
        body = httpx.get(f"{svc.wait_ready().url}/readyz", timeout=10).json()
    finally:
        svc.terminate()
    assert body["provider"] == "CPUExecutionProvider"
