"""The GPU benchmark's `--variant` rows: read before any stage runs (a value may hold commas), and rendered with
only what each variant changes, not the settings the benchmark gives every service it starts. Run as commands, as
a GPU host runs them (tests never import the benchmarks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.bench.bench_helpers import run_python

# The CPU run of the GPU benchmark's docstring, less every stage but the model and the variants.
TINY = ["--arch", "deeplabv3_resnet50", "--input-size", "65", "--concurrency", "2", "--seconds", "1", "--clients", "1",
        "--max-batch", "2", "--variant-concurrency", "2",
        "--skip", "raw,eager,service,null,multi,off,fp32,before,raw_fp32,two_threads,gil"]


def variant_rows(markdown: str) -> list[str]:
    """The first cells of the service table's variant rows (`name: settings`)."""
    return re.findall(r"^\| (threads1: [^|]*?) \| 2 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \|", markdown,
                      re.MULTILINE)


def test_a_variant_row_shows_only_what_the_variant_changes(tmp_path: Path) -> None:
    result = run_python("-m", "bench.gpu_bench", *TINY, "--variant", "threads1:SEGMENT_WORKER_THREADS=1",
                        "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "run.json"), "--out",
                        str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["errors"] == {}, run["errors"]
    # The variant's service did get the benchmark's own settings...
    assert run["variant_threads1"]["env"]["SEGMENT_REQUIRE_GPU"] == "false", run["variant_threads1"]["env"]
    # ...and its row names only the variant's.
    assert variant_rows((tmp_path / "BENCHMARKS.md").read_text()) == ["threads1: SEGMENT_WORKER_THREADS=1"]
    # So does a section rendered again from the saved run, and from a run saved before the runs kept `base_env`.
    older = {k: v for k, v in run.items() if k != "base_env"}
    (tmp_path / "older.json").write_text(json.dumps(older))
    for saved in ("run.json", "older.json"):
        again = tmp_path / saved.removesuffix(".json")
        rendered = run_python("-m", "bench.gpu_bench", "--render", str(tmp_path / saved), "--out", str(again))
        assert rendered.returncode == 0, rendered.stderr
        assert variant_rows((again / "BENCHMARKS.md").read_text()) == ["threads1: SEGMENT_WORKER_THREADS=1"], saved


def test_variants_whose_values_hold_commas_are_read_whole(tmp_path: Path) -> None:
    """A list setting or several CUDA options are one value; with the run's time up before its first stage, the
    variants are still read, and saved."""
    result = run_python("-m", "bench.gpu_bench", "--skip", "model", "--time-limit", "1e-9",
                        "--variant", "buckets:SEGMENT_BATCH_BUCKETS=1,4,16",
                        "--variant", "pow2:SEGMENT_CUDA_OPTIONS=prefer_nhwc=0,arena_extend_strategy=kNextPowerOfTwo,"
                                     "output=stats,client_pool=shared",
                        "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "run.json"), "--out",
                        str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["variants"] == {
        "buckets": {"SEGMENT_BATCH_BUCKETS": "1,4,16"},
        "pow2": {"SEGMENT_CUDA_OPTIONS": "prefer_nhwc=0,arena_extend_strategy=kNextPowerOfTwo", "output": "stats",
                 "client_pool": "shared"}}, run["variants"]
    assert {"variant_buckets", "variant_pow2"} <= set(run["skipped_for_time"]), run


def test_a_mistyped_variant_stops_the_run_before_its_first_stage(tmp_path: Path) -> None:
    """Not where its turn comes, after the raw, eager and service stages have spent the GPU's time."""
    for spec, says in (("nocolon", "expected NAME:KEY=VALUE"), ("bad:SEGMENT_WORKERS", "is not KEY=VALUE"),
                       ("pool:client_pool=one", "client_pool is one of")):
        result = run_python("-m", "bench.gpu_bench", "--skip", "model", "--time-limit", "1e-9", "--variant", spec,
                            "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "run.json"), "--out",
                            str(tmp_path))
        assert result.returncode == 2, result.stdout + result.stderr
        assert says in result.stderr, result.stderr
        assert not (tmp_path / "run.json").exists(), spec  # nothing ran
    twice = run_python("-m", "bench.gpu_bench", "--variant", "a:SEGMENT_WORKERS=2", "--variant", "a:SEGMENT_WORKERS=3",
                       "--json", str(tmp_path / "run.json"), "--out", str(tmp_path))
    assert twice.returncode == 2 and "names must differ" in twice.stderr, twice.stderr
