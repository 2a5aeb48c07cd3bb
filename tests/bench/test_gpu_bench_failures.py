"""The GPU benchmark's service stages against real servers on the embedded model: what a run leaves behind (nothing
in the temporary folder: not the thread map each server is started with, not py-spy's GIL samples), and what a
service that dies in the middle of a stage leaves of it (the load points measured before). Run as commands, as a
GPU host runs them (tests never import the benchmarks)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tests.bench.bench_helpers import preamble, run_python

DYING_SERVICE = Path(__file__).resolve().parent / "dying_service"


def test_a_service_configuration_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Every service the benchmark starts writes a map of its Python threads into a temporary file, and every load
    point from `gil_from` on has py-spy write its samples into another: a run starts dozens of each."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = preamble(scratch) + """
from bench.gpu_service import service_config
with ProcessPoolExecutor(1) as pool:
    out = service_config(pool, MODEL, [BODY], [1], 0.5, 1, {"SEGMENT_LOG_LEVEL": "warning"}, gil_from=1)
print("RESULT", json.dumps({"groups": sorted(out["points"][0]["threads"]), "gil": out["points"][0]["gil"]}))
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert {"codec", "inference"} <= set(measured["groups"]), measured  # the map was there, and read
    assert "held" in measured["gil"] or "unavailable" in measured["gil"], measured
    assert sorted(os.listdir(scratch)) == [], "left behind"


def test_a_service_that_dies_midway_keeps_the_points_measured_before(tmp_path: Path) -> None:
    """The service (and the multi-process diagnostic) dies at its second load point, as a process whose GPU failed
    hard does: the stage fails, and its first load point stays in the saved results; no temporary file is left."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    saved = tmp_path / "run.json"
    dying = {"PYTHONPATH": os.pathsep.join([str(DYING_SERVICE), os.environ.get("PYTHONPATH", "")]),
             # /metrics is scraped once after readiness (the GPU metrics), then before and after each load point.
             "SEGMENT_LOG_LEVEL": "warning"}
    code = preamble(scratch) + f"""
from bench.gpu_diagnose import multi_process
from bench.gpu_service import service_config
from bench.gpu_stages import Stages
stages = Stages({{}}, Path({str(saved)!r}), set())
dying = {dying!r}
with ProcessPoolExecutor(1) as pool:
    stages.run("service", lambda: service_config(pool, MODEL, [BODY], [1, 2], 0.5, 1,
                                                 {{**dying, "TESTKIT_DIE_AFTER_SCRAPES": "4"}}, gil_from=1))
    stages.run("multi", lambda: multi_process(pool, MODEL, [BODY], [1], [1, 2], 0.5, 1,
                                              {{**dying, "TESTKIT_DIE_AFTER_SCRAPES": "2"}}))
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(saved.read_text())
    assert set(run["errors"]) == {"service", "multi"}, run["errors"]
    service = [(p["concurrency"], p["errors"]) for p in run["service"]["points"]]
    assert service == [(1, 0)] and run["service"]["points"][0]["throughput"] > 0, run["service"]
    multi = [(p["concurrency"], p["errors"]) for p in run["multi"]["1"]["points"]]
    assert multi == [(1, 0)] and run["multi"]["1"]["points"][0]["throughput"] > 0, run["multi"]
    assert sorted(os.listdir(scratch)) == [], "left behind"
    # The section shows what was measured, beside the failures.
    rendered = run_python("-m", "bench.gpu_bench", "--render", str(saved), "--out", str(tmp_path))
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert re.search(r"^\| batching, max None, buckets, 2 in flight \| 1 \| [\d.]+ \|", section, re.MULTILINE), section
    assert re.search(r"^\| 1 \| 1 \| [\d.]+ \| ", section, re.MULTILINE), section  # the multi table
    assert "Stages that failed: multi, service (tracebacks in the JSON)." in section


def test_gil_sampling_without_py_spy_leaves_no_file(tmp_path: Path) -> None:
    """py-spy is optional (a GPU host may lack it): every sampled load point then says so, and leaves nothing."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = preamble(scratch) + """
import os
from bench import gil_probe
gil_probe.py_spy = lambda: None  # as on a host without py-spy
sampler = gil_probe.GilSampler(os.getpid(), 1)
print("RESULT", json.dumps(sampler.result(lambda tid, name: name)))
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.split("RESULT ", 1)[1]) == {"unavailable": "py-spy is not installed"}
    assert sorted(os.listdir(scratch)) == [], "left behind"


def test_a_stage_whose_process_crashes_takes_only_itself(tmp_path: Path) -> None:
    """The CUDA graph stage runs in a process of its own (`in_child`): a capture that crashes the driver, here a
    child that aborts, is that stage's error; the benchmark's own process lives on, the stage after it runs, and a
    stage whose child answers keeps its result."""
    saved = tmp_path / "run.json"
    code = f"""
import os
from pathlib import Path
from bench.gpu_stages import Stages, in_child
stages = Stages({{}}, Path({str(saved)!r}), set())
stages.run("bound", lambda: in_child(os.abort))
stages.run("answered", lambda: in_child(os.getpid) != os.getpid())
stages.run("after", lambda: "ran")
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(saved.read_text())
    assert set(run["errors"]) == {"bound"}, run["errors"]
    assert "the process running abort died (a crash or a signal)" in run["errors"]["bound"]
    assert run["answered"] is True and run["after"] == "ran", run
