"""The GPU benchmark goes on, and writes its section, past what a GPU run can meet and a CPU run does not: a CUDA
context an earlier stage broke, and a configuration whose every answer was an error. Run as commands, as a GPU
host runs them (tests never import the benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testkit import REPO
from tests.bench.bench_helpers import run_python

BROKEN_CUDA_CACHE = Path(__file__).resolve().parent / "broken_cuda_cache"


def test_a_broken_cuda_context_does_not_end_the_run(tmp_path: Path) -> None:
    """After the eager stage the benchmark frees torch's cached GPU memory; where that stage broke the process's
    CUDA context, freeing raises, and the stages after it (the service's, in processes of their own) must still
    run, and the section be written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BROKEN_CUDA_CACHE), str(REPO)]),
           "TESTKIT_BROKEN_CUDA_CACHE": "1"}
    result = subprocess.run([sys.executable, "-m", "bench.gpu_bench", "--skip", "model", "--time-limit", "1e-9",
                             "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "run.json"), "--out",
                             str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GPU memory not released (RuntimeError: CUDA error: an illegal memory access" in result.stdout
    run = json.loads((tmp_path / "run.json").read_text())
    assert {"service", "off", "null", "multi", "before"} <= set(run["skipped_for_time"]), run  # reached, in order
    assert "### GPU: one run on one device" in (tmp_path / "BENCHMARKS.md").read_text()


def test_a_configuration_without_one_good_answer_still_renders(tmp_path: Path) -> None:
    """fp32 through the service, every answer an error (a device failing every run answers 503): its throughput
    is 0, and the fp16/fp32 target (a ratio to it) is not met rather than a division that loses the section."""
    code = f"""
import json
from bench.harness import latency_summary
def point(latencies, concurrency, errors):
    return {{**latency_summary(latencies, 2.0), "concurrency": concurrency, "mean_batch": 1.0, "errors": errors,
             "stages_ms": {{}}}}
run = {{"args": {{"max_batch": "16", "upload": "1024x768"}}, "device": {{}}, "errors": {{}},
        "service": {{"env": {{}}, "points": [point([0.05] * 40, 32, 0)]}},
        "fp32": {{"env": {{}}, "points": [point([], 32, 40)]}}}}
open({str(tmp_path / "run.json")!r}, "w").write(json.dumps(run))
"""
    built = run_python("-c", code)
    assert built.returncode == 0, built.stderr
    result = run_python("-m", "bench.gpu_bench", "--render", str(tmp_path / "run.json"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| service fp16 / fp32 at c=32 | 20 / 0 | nan | ≥ 1.8 | **no** |" in section, section
    assert "| fp32 | 32 | 0.0 | nan | nan | 1.0 | 40 |" in section, section
