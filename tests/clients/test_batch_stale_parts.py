"""The temporary files of `segment` (`.segment-<random>.part`, renamed into place once written): a real `segment`
process killed (SIGKILL) while it writes one leaves it behind, and the next run into the same folder removes it;
one that a running `segment` process is still writing is never removed, however another run judges it.

Before: nothing removed them. They are never read, as input or as done, but they piled up in the output folders,
each as large as the output it was to become.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from PIL import Image

from testkit.photos import photo
from tests.clients.test_batch_interrupts import Segment, outputs

OVERLAY = ["--output", "overlay", "--format", "png"]  # outputs of megabytes: each write takes a while


def large_photos(folder: Path, count: int) -> list[Path]:
    """`count` real photographs of about two megapixels, each of its own size."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{index:02}.png" for index in range(count)]
    for index, path in enumerate(paths):
        Image.fromarray(photo("astronaut.png", (1600 + 8 * index, 1200))).save(path, compress_level=1)
    return paths


def temporary_files(out: Path) -> list[Path]:
    """The temporary files under `out`, in all its folders."""
    return sorted(out.rglob(".segment-*.part")) if out.is_dir() else []


def stopped_writing(run: Segment, folder: Path, timeout: float = 60) -> Path | None:
    """A temporary file in `folder` that `run` is writing (not the run's record, when it is written elsewhere),
    with `run` stopped (SIGSTOP) while it does; None when the run ended first. A file with bytes in it is one its
    writer has locked (it locks the file before it writes)."""
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None:
        assert time.monotonic() < deadline, run.err
        if any(folder.glob(".segment-*.part")):
            run.proc.send_signal(signal.SIGSTOP)
            # Until every thread of it has stopped: a signal is delivered in its own time.
            _, status = os.waitpid(run.proc.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):  # it ended meanwhile
                return None
            written = [path for path in folder.glob(".segment-*.part") if _size(path) > 0]
            if written:
                return written[0]
            run.proc.send_signal(signal.SIGCONT)  # renamed meanwhile, or not written yet: try the next
        time.sleep(0.001)
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed into place
        return 0


def killed_mid_write(inputs: Path, out: Path, folder: Path, url: str) -> Path:
    """The temporary file in `folder` left by a `segment` run killed (SIGKILL) while writing it."""
    for _ in range(5):  # each output takes a while to write: the first try all but always catches one
        run = Segment(str(inputs), "--out", str(out), *OVERLAY, "--server", url, "-j", "2", "--overwrite")
        try:
            caught = stopped_writing(run, folder)
        finally:
            run.kill()
        if caught is not None:
            return caught
    raise AssertionError("no run was caught writing")


def test_a_rerun_removes_the_temporary_files_of_a_killed_run(server_url: str, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    large_photos(inputs / "sub", 6)  # outputs in a folder below --out, where their temporary files are made
    out = tmp_path / "out"
    left = killed_mid_write(inputs, out, out / "sub", server_url)
    assert left in temporary_files(out)
    run = Segment(str(inputs), "--out", str(out), *OVERLAY, "--server", server_url)
    try:
        assert run.wait(120) == 0, run.err
    finally:
        run.kill()
    assert temporary_files(out) == []
    assert len(outputs(out / "sub")) == 6  # and every output made


def test_a_file_a_running_segment_writes_is_left_to_it(server_url: str, tmp_path: Path) -> None:
    """Run A is stopped (SIGSTOP) while it writes a temporary file, run B runs into the same folder from start to
    end, then run A goes on: its file is still there for it to rename."""
    large_photos(tmp_path / "in", 6)
    Image.fromarray(photo("coffee.png", (64, 48))).save(tmp_path / "small.png")
    out = tmp_path / "out"
    first = Segment(str(tmp_path / "in"), "--out", str(out), *OVERLAY, "--server", server_url, "-j", "2")
    try:
        writing = stopped_writing(first, out)
        assert writing is not None, first.err
        before = writing.stat()
        second = Segment(str(tmp_path / "small.png"), "--out", str(out), *OVERLAY, "--server", server_url)
        try:
            assert second.wait(60) == 0, second.err
        finally:
            second.kill()
        after = writing.stat()  # FileNotFoundError had run B removed it
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
        first.proc.send_signal(signal.SIGCONT)
        assert first.wait(120) == 0, first.err
    finally:
        first.proc.send_signal(signal.SIGCONT)
        first.kill()
    assert "segment: 6 written, 0 skipped (already done), 0 failed, 6 total" in first.err
    assert temporary_files(out) == [] and len(outputs(out)) == 7
