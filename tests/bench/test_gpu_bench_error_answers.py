"""A load point whose clients get some error answers: the batch size and the server's CPU per image are figures of
the answered images (an error answer ran in no batch). Run as a command against a real server on the embedded model,
as a GPU host runs it (tests never import the benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.bench_helpers import preamble, run_python


def test_error_answers_do_not_dilute_batch_size_or_cpu_per_image(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # Every other request is not an image (a 4xx answered at once, outside any batch).
    code = preamble(scratch) + """
from bench.gpu_service import service_config
with ProcessPoolExecutor(1) as pool:
    out = service_config(pool, MODEL, [BODY, b"not an image"], [2], 1.5, 1, {"SEGMENT_LOG_LEVEL": "warning"})
print("RESULT", json.dumps(out["points"][0]))
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    point = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert point["errors"] > 0 and all(400 <= s < 500 for s in point["statuses"]), point
    assert point["throughput"] > 0, point
    assert point["mean_batch"] >= 1.0, point
    # server cores × wall / answered images = server CPU-seconds per answered image
    per_image_ms = point["server_cores"] / point["throughput"] * 1000
    assert abs(point["server_cpu_ms_per_request"] - per_image_ms) <= 1e-6 * per_image_ms, point
