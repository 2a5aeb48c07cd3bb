"""A GPU bench run whose model export fails stops there, saying so, instead of running every later stage (each of
which needs the exported models) into the same failure on device time."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.bench_helpers import run_python


def test_a_failed_export_stops_the_run_before_any_stage_that_needs_the_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_python("-m", "bench.gpu_bench", "--arch", "no_such_architecture", "--workdir", str(tmp_path / "w"),
                        "--out", str(out), "--json", str(tmp_path / "run.json"), "--time-limit", "120")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "the model export failed" in result.stderr, result.stderr
    saved = json.loads((tmp_path / "run.json").read_text())
    assert "no_such_architecture" in saved["errors"]["model"]
    assert set(saved["errors"]) == {"model"}, sorted(saved["errors"])  # no stage ran into the same failure
    assert set(saved["stage_s"]) == {"model"}, saved["stage_s"]
