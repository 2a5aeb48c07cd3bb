"""The GPU benchmark ends inside the one command a lent GPU runs (600 s, setup included): a service start that
cannot get ready fails its stage in seconds, no stage starts after the run's time limit, and what was measured is
saved and rendered. Run as commands, as a GPU host runs them (tests never import the benchmarks)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from service.settings import default_model_path
from testkit import REPO
from testkit.server import site_pythonpath
from tests.bench.bench_helpers import run_python

FAILING_WARM_UP = Path(__file__).resolve().parent / "failing_warm_up"


def start_one_config(env: dict[str, str], ready_timeout: float | None = None) -> str:
    """`service_config` on the embedded model with `env`, in a child process; prints how it ended and when."""
    timeout = "" if ready_timeout is None else f", ready_timeout={ready_timeout}"
    code = f"""
import sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from bench.gpu_service import service_config
start = time.monotonic()
with ProcessPoolExecutor(1) as pool:
    try:
        service_config(pool, Path({str(default_model_path())!r}), [b''], [1], 0.5, 1, {env!r}{timeout})
    except RuntimeError as exc:
        print(f'failed after {{time.monotonic() - start:.1f}} s: {{exc}}')
        sys.exit(0)
print('served')
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def elapsed_s(output: str) -> float:
    found = re.search(r"failed after ([\d.]+) s", output)
    assert found is not None, output
    return float(found.group(1))


def test_a_service_whose_warm_up_fails_fails_its_stage_at_once() -> None:
    """A failed warm-up is retried for a minute before the service stops itself (for ever under a supervisor,
    which replaces the worker): the benchmark stops waiting once /readyz has named the error for a few retries."""
    path = os.pathsep.join([str(FAILING_WARM_UP), str(REPO), os.environ.get("PYTHONPATH", "")])
    output = start_one_config({"PYTHONPATH": path})
    assert "warm-up failed" in output and "illegal memory access" in output, output
    assert elapsed_s(output) < 30, output


def test_a_service_not_ready_in_time_fails_its_stage_after_the_ready_timeout() -> None:
    path = site_pythonpath("slow_warm_up")
    output = start_one_config({"PYTHONPATH": path, "TESTKIT_WARM_UP_S": "120"}, ready_timeout=4)
    assert "not ready after 4 s" in output, output
    assert elapsed_s(output) < 30, output


def test_no_stage_starts_after_the_time_limit_and_each_one_is_saved(tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    code = f"""
import json, time
from pathlib import Path
from bench.gpu_stages import MIN_READY_S, Stages
stages = Stages({{}}, Path({str(saved)!r}), {{"skipped"}}, time_limit_s=1.0)
stages.run("first", lambda: time.sleep(1.2) or {{"img_s": 1}})
print("after first", json.loads(Path({str(saved)!r}).read_text()))
stages.run("skipped", lambda: 1 / 0)
stages.run("late", lambda: {{"img_s": 2}})
print("ready timeout", stages.ready_timeout(180), MIN_READY_S)
unlimited = Stages({{}}, Path({str(tmp_path / "unlimited.json")!r}), set())
unlimited.run("broken", lambda: 1 / 0)
unlimited.run("next", lambda: 3)
print("ready timeout unlimited", unlimited.ready_timeout(180))
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "after first {'errors': {}, 'first': {'img_s': 1}" in result.stdout, result.stdout
    run = json.loads(saved.read_text())
    assert run["first"] == {"img_s": 1} and "late" not in run, run
    assert run["skipped_for_time"] == ["late"], run  # `skipped` was skipped by name, not for time
    assert "ready timeout 30.0 30.0" in result.stdout, result.stdout
    unlimited = json.loads((tmp_path / "unlimited.json").read_text())
    assert "ZeroDivisionError" in unlimited["errors"]["broken"] and unlimited["next"] == 3, unlimited
    assert "ready timeout unlimited 180" in result.stdout, result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "unlimited.json"]  # no partial file left


def test_a_run_past_its_time_limit_renders_what_it_has(tmp_path: Path) -> None:
    """The benchmark itself: with its time up before the first stage, every stage is listed as not started, and
    the JSON and the rendered section are still written."""
    result = run_python("-m", "bench.gpu_bench", "--skip", "model", "--time-limit", "1e-9", "--workdir",
                        str(tmp_path / "work"), "--json", str(tmp_path / "run.json"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["errors"] == {}, run["errors"]
    assert {"raw", "eager", "service", "fp32", "off", "null"} <= set(run["skipped_for_time"]), run
    assert "Stages not started, the run's time limit having passed: raw, " in (tmp_path / "BENCHMARKS.md").read_text()
