"""The GPU benchmark checks the masks each service configuration answers against the run's first configuration
(the `service` stage), so that a configuration serving wrong labels cannot pass for a faster row. Run as a command,
as a GPU host runs it (tests never import the benchmarks), with a tiny exported model."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from service.settings import default_model_path
from tests.bench.bench_helpers import run_python
from tests.bench.test_gpu_bench_variants import TINY

# TINY with the service stage run (the run's mask reference), the first-batch timings then covering buckets 1 and 2.
SKIP = TINY[TINY.index("--skip") + 1].replace("service,", "")
ARGS = [*TINY[:TINY.index("--skip")], "--skip", SKIP]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One tiny CPU run: the defaults, a variant serving the same model, one serving the embedded demo model
    (other classes, other labels) in place of the exported one, and one refusing the uploads."""
    tmp = tmp_path_factory.mktemp("masks")
    result = run_python("-m", "bench.gpu_bench", *ARGS, "--variant", "threads1:SEGMENT_WORKER_THREADS=1",
                        "--variant", f"other:SEGMENT_MODEL_PATH={default_model_path()}",
                        "--variant", "small:SEGMENT_MAX_UPLOAD_BYTES=1000",
                        "--workdir", str(tmp / "work"), "--json", str(tmp / "run.json"), "--out", str(tmp))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((tmp / "run.json").read_text()), (tmp / "BENCHMARKS.md").read_text()


def test_configurations_serving_the_same_model_agree_with_the_reference(run: tuple[dict[str, Any], str]) -> None:
    results, markdown = run
    assert results["service"]["masks"] == {"reference": True, "agreement": 1.0, "consistent": True}, results["service"]
    assert results["variant_threads1"]["masks"] == {"agreement": 1.0, "consistent": True}, results["variant_threads1"]
    # The load points still ran after the check, and the rows show the agreement.
    assert results["service"]["points"] and results["variant_threads1"]["points"]
    assert re.search(r"^\| threads1: SEGMENT_WORKER_THREADS=1 \| 2 \|.* \| 100\.00 \|$", markdown, re.MULTILINE), \
        markdown
    assert not any(key != "masks" for key in results["errors"]), results["errors"]


def test_a_configuration_serving_other_labels_is_named_in_the_errors(run: tuple[dict[str, Any], str]) -> None:
    results, markdown = run
    other = results["variant_other"]["masks"]
    assert other["agreement"] < 0.99 and other["consistent"] is True, other
    message = results["errors"].get("masks", "")
    assert "variant_other" in message, results["errors"]
    assert not re.search(r"\b(service|variant_threads1) \(", message), message
    assert f"Mask check: {message}." in markdown, markdown


def test_a_configuration_whose_check_fails_still_runs_its_load_points(run: tuple[dict[str, Any], str]) -> None:
    """Uploads refused (413) to the check and the load alike: the error is recorded, the stage does not fail."""
    results, markdown = run
    small = results["variant_small"]
    assert "HTTP 413" in small["masks"]["error"], small["masks"]
    assert small["points"] and small["points"][0]["errors"] > 0, small["points"]
    assert "variant_small" not in results["errors"] and "variant_small" not in results["errors"]["masks"]
    assert re.search(r"^\| small: SEGMENT_MAX_UPLOAD_BYTES=1000 \| 2 \|.* \| error \|$", markdown, re.MULTILINE), \
        markdown
