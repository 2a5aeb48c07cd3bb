"""`segment` on many files: at most `--jobs` files are taken at a time, and the memory of a run does not grow with
the number of its files (before: every file's future was made up front and kept to the end, ~2.9 KiB a file)."""

from __future__ import annotations

import argparse
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clients import batch
from clients.batch import main
from clients.batch_outputs import Job
from service.client import SegmentResult
from tests.clients.test_batch_interrupts import memory_dir, outputs

_RUN_JOBS = batch.run_jobs  # the real one, which the memory test measures


class Stub:
    """A backend that answers at once (no model): what is measured is the run's own bookkeeping."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished = 0

    def segment(self, data: bytes, output: str, **options: object) -> SegmentResult:
        with self.lock:
            self.finished += 1
        return SegmentResult(output, b"\x89PNG stub", "image/png", None, None)


def _run_peak(monkeypatch: pytest.MonkeyPatch, folder: Path, files: int) -> int:
    """Bytes allocated at the peak of `segment`'s run over `files` files (after listing them), by tracemalloc."""
    inputs = folder / f"in{files}"
    inputs.mkdir()
    for index in range(files):
        (inputs / f"f{index:05}.png").write_bytes(b"not decoded by the stub")
    peaks: list[int] = []

    def measured(*args: Any, **kwargs: Any) -> Any:
        tracemalloc.start()
        try:
            return _RUN_JOBS(*args, **kwargs)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    monkeypatch.setattr(batch, "run_jobs", measured)
    monkeypatch.setattr(batch, "_backend", lambda args: (Stub(), None))
    monkeypatch.setattr(batch, "_model", lambda backend, client: {"name": "stub"})
    assert main([str(inputs), "--out", str(folder / f"out{files}"), "--local", "stub.onnx", "-j", "4",
                 "--no-progress"]) == 0
    assert len(outputs(folder / f"out{files}")) == files
    return peaks[0]


def test_the_memory_of_a_run_does_not_grow_with_its_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with memory_dir(tmp_path) as folder:
        small, large = _run_peak(monkeypatch, folder, 200), _run_peak(monkeypatch, folder, 4000)
    # Before: 1.2 KiB more for each file (futures, work items, outcomes); now the same peak whatever the count.
    assert large - small < 64 * 1024, (small, large)


def test_at_most_jobs_files_are_taken_at_a_time(tmp_path: Path) -> None:
    """`run_jobs` takes a file from the list only when a thread is free for it, however long the list is."""
    stub, jobs, files = Stub(), 3, 2000
    taken = 0
    ahead: list[int] = []

    def todo() -> Iterator[Job]:
        nonlocal taken
        for index in range(files):
            taken += 1
            ahead.append(taken - stub.finished)  # files taken and not finished, this one included
            yield Job(tmp_path / "in.png", tmp_path / "out" / f"f{index:04}.png")

    (tmp_path / "in.png").write_bytes(b"read, not decoded")
    args = argparse.Namespace(jobs=jobs, no_progress=True, output="labels", alpha=None, format=None, tolerance=None,
                              min_area=None, crf=False, max_connection_failures=10)
    tally = batch.Tally(files, 0)
    batch.run_jobs(stub, todo(), args, tally)
    assert tally.written == files and not tally.failures and stub.finished == files
    assert len(ahead) == files and max(ahead) <= jobs, max(ahead)


def test_a_real_run_over_many_small_files(server_url: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(400):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(inputs / f"s{index:03}.png")
    assert main([str(inputs), "--out", str(out), "--output", "labels", "--server", server_url, "-j", "4",
                 "--no-progress"]) == 0
    assert "400 written, 0 skipped (already done), 0 failed, 400 total" in capsys.readouterr().err
    written = outputs(out)
    assert len(written) == 400 and all(Image.open(out / name).size == (16, 12) for name in list(written)[:20])
