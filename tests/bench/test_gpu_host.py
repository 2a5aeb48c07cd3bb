"""The GPU benchmark's own guards, run here as a GPU host would run them (as commands: tests never import the
benchmarks): what it checks before a run spends device time, and what the bundle carries to the host."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import default_model_path
from testkit import REPO
from tests.bench.bench_helpers import run_python


def test_check_imports_names_a_package_the_first_stage_needs(tmp_path: Path) -> None:
    """The setup's `--check-imports` is the last check before device time: a package only the exporter (the first
    stage, which every other stage needs) imports must fail it, named, not the run a minute later."""
    hidden = tmp_path / "torchvision"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torchvision'\", "
                                        "name='torchvision')\n")
    result = run_python("-m", "bench.gpu_bench", "--check-imports", pythonpath=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(r"missing: torchvision \(needed by model_export\.architectures", result.stderr), result.stderr


def test_a_raw_stage_whose_session_is_not_on_the_gpu_stops_at_once() -> None:
    """onnxruntime makes a session asked for CUDA on the CPU where the CUDA provider cannot be loaded (as on this
    CPU-only build); a raw stage must fail then, not measure the CPU for minutes and report it as the GPU."""
    code = ("from pathlib import Path; from bench.gpu_raw import raw_ort; "
            f"print(raw_ort(Path({str(default_model_path())!r}), [1], 64, 0.01, 'CUDAExecutionProvider', "
            "{'nhwc': {}}))")
    result = run_python("-c", code)
    assert result.returncode != 0, result.stdout
    assert "the session runs on CPUExecutionProvider, not CUDAExecutionProvider" in result.stderr, result.stderr


def test_the_bundle_carries_nvml_at_the_gpu_images_version() -> None:
    """Without nvidia-ml-py a GPU run reads no bucket memory and exports no segment_gpu_* metrics; the host's image
    lacks it, so the bundle brings the GPU image's pinned version."""
    pinned = re.search(r"ARG NVML_VERSION=(\S+)", (REPO / "docker" / "Dockerfile.gpu").read_text())
    assert pinned is not None
    wheels = re.search(r'EXTRA_WHEELS=\$\{GPU_EXTRA_WHEELS:-"([^"]*)"\}', (REPO / "bench" / "gpu_host.sh").read_text())
    assert wheels is not None
    assert f"nvidia-ml-py=={pinned.group(1)}" in wheels.group(1).split()


def test_the_bundle_carries_the_json_log_formatter_at_the_serving_images_version() -> None:
    """`SEGMENT_LOG_FORMAT=json` needs python-json-logger, which the host's image lacks."""
    pinned = re.search(r"^python-json-logger==(\S+)$", (REPO / "docker" / "constraints-serve.txt").read_text(),
                       re.MULTILINE)
    assert pinned is not None
    wheels = re.search(r'EXTRA_WHEELS=\$\{GPU_EXTRA_WHEELS:-"([^"]*)"\}', (REPO / "bench" / "gpu_host.sh").read_text())
    assert wheels is not None
    assert f"python-json-logger=={pinned.group(1)}" in wheels.group(1).split()
