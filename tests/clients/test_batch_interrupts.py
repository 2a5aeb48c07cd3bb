"""Ctrl-C on `segment`, as a user gives it: a real SIGINT to a real `segment` process, whose requests wait in a real
server's model runs (held at a gate): a first Ctrl-C finishes the files in progress, a second ends the run at once,
one while the inputs are listed ends it cleanly, and an interrupted `--overwrite` resumes without old files."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.batch import main
from service.core.engine import load_engine
from service.settings import Settings
from testkit.photos import photo
from tests.clients.cli_process import CliProcess
from tests.service.svc_helpers import LiveServer

RUN_FILE = ".segment-run.json"
SHM = Path("/dev/shm")


class Gate:
    """Holds a server's model runs: `hold()` stops them, `allow(n)` lets n more through, `open()` every one;
    `arrived` counts the runs that reached it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._allowed: int | None = None  # None: open
        self.arrived = 0

    def wrap(self, run: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[[list[np.ndarray]], np.ndarray]:
        def gated(batch: list[np.ndarray]) -> np.ndarray:
            with self._cond:
                self.arrived += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._allowed is None or self._allowed > 0, timeout=60)
                if self._allowed:
                    self._allowed -= 1
            return run(batch)
        return gated

    def hold(self) -> None:
        with self._cond:
            self._allowed, self.arrived = 0, 0

    def allow(self, runs: int) -> None:
        with self._cond:
            self._allowed = (self._allowed or 0) + runs
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._allowed = None
            self._cond.notify_all()

    def wait_arrived(self, runs: int, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.arrived >= runs, timeout), f"{self.arrived} runs, not {runs}"


@contextlib.contextmanager
def gated_server(model: Path, **settings: object) -> Iterator[tuple[LiveServer, Gate]]:
    """A real server on `model` whose runs pass `Gate` (open until held; warm-up passes), one image a run, one run
    at a time, so that each file held is one run held."""
    options = Settings(model_path=model, host="127.0.0.1", port=0, intra_op_threads=1, worker_threads=2,
                       max_batch_size=1, concurrent_batches=1, **settings)
    engine = load_engine(options.engine_options())
    gate = Gate()
    engine.run_images = gate.wrap(engine.run_images)  # type: ignore[method-assign]  # what requests run
    server = LiveServer(options, engine=engine).start()
    try:
        yield server, gate
    finally:
        gate.open()
        server.stop()


class Segment(CliProcess):
    """`segment` in its own process (the installed module of this checkout), stderr read line by line."""

    def __init__(self, *args: str) -> None:
        super().__init__("clients.batch", *args, "--no-progress")


def photos(folder: Path, count: int) -> list[Path]:
    """`count` small real photographs, each of its own size."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{index:02}.png" for index in range(count)]
    for index, path in enumerate(paths):
        Image.fromarray(photo("coffee.png", (40 + 2 * index, 32))).save(path)
    return paths


def outputs(root: Path) -> dict[str, bytes]:
    """The output files in `root` (not its record or temporary files), also while a run adds or deletes some."""
    found = {}
    for path in sorted(root.iterdir()):
        if not path.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                found[path.name] = path.read_bytes()
    return found


def _started_run(tmp_path: Path, url: str, gate: Gate, files: int = 6) -> tuple[Segment, int]:
    """A `segment -j 2` run with its requests held at the gate, Ctrl-C'd once: the process and how many files
    it says are in progress."""
    photos(tmp_path / "in", files)
    gate.hold()
    run = Segment(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--output", "labels", "--server", url,
                  "-j", "2")
    gate.wait_arrived(1)
    time.sleep(0.5)  # both threads' requests on their way: the second waits in the server's queue
    run.ctrl_c()
    line = run.wait_line("segment: interrupted: finishing the ")
    in_progress = int(line.split("finishing the ")[1].split()[0])
    assert 1 <= in_progress <= 2, line
    return run, in_progress


def test_a_first_ctrl_c_finishes_the_files_in_progress(tiny_onnx_model: Path, tmp_path: Path) -> None:
    with gated_server(tiny_onnx_model) as (server, gate):
        run, in_progress = _started_run(tmp_path, server.url, gate)
        try:
            time.sleep(0.5)
            assert run.proc.poll() is None, run.err  # waiting for the files in progress
            assert "(Ctrl-C again to stop at once)" in run.err
            gate.open()
            assert run.wait(30) == 130
        finally:
            run.kill()
    assert f"segment: {in_progress} written, 0 skipped (already done), 0 failed, 6 total; interrupted, " \
           f"{6 - in_progress} not done" in run.err
    assert "Traceback" not in run.err and "left in progress" not in run.err
    assert len(outputs(tmp_path / "out")) == in_progress


def test_a_second_ctrl_c_ends_the_run_at_once(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """Before: the second Ctrl-C still waited for the requests in progress (up to the client's 60 s timeout), and
    then said "interrupted", the message for a run that had not started, without the summary."""
    with gated_server(tiny_onnx_model) as (server, gate):
        run, in_progress = _started_run(tmp_path, server.url, gate)
        try:
            run.ctrl_c()
            pressed = time.monotonic()
            assert run.wait(10) == 130
            assert time.monotonic() - pressed < 3.0  # the model runs are still held
        finally:
            run.kill()
    assert f"segment: interrupted again: not waiting for the {in_progress} files in progress" in run.err
    assert "segment: 0 written, 0 skipped (already done), 0 failed, 6 total; interrupted, 6 not done " \
           f"({in_progress} of them left in progress)" in run.err
    assert "Traceback" not in run.err


@contextlib.contextmanager
def memory_dir(fallback: Path) -> Iterator[Path]:
    """A folder in memory where there is one (tmpfs), else `fallback`: thousands of files are made (and fsynced)
    at once, whatever the load on the disk."""
    if not SHM.is_dir():
        yield fallback
        return
    with tempfile.TemporaryDirectory(dir=SHM) as name:
        yield Path(name)


@pytest.fixture
def memory_folder(tmp_path: Path) -> Iterator[Path]:
    with memory_dir(tmp_path) as folder:
        yield folder


def test_ctrl_c_while_the_inputs_are_listed(memory_folder: Path, tmp_path: Path) -> None:
    """Before: a KeyboardInterrupt traceback, and the process killed by SIGINT (status -2), not exit 130."""
    inputs = memory_folder / "in"
    for folder in range(300):  # 30,000 files: seconds to list
        (inputs / f"d{folder:03}").mkdir(parents=True)
        for name in range(100):
            (inputs / f"d{folder:03}" / f"f{name:03}.jpg").write_bytes(b"")
    run = Segment(str(inputs), "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9")
    try:
        _wait_listing(run.proc.pid, inputs)
        run.ctrl_c()
        assert run.wait(30) == 130
    finally:
        run.kill()
    assert run.lines == ["segment: interrupted while listing the inputs; no file was segmented"], run.err
    assert not (tmp_path / "out").exists()


def _wait_listing(pid: int, folder: Path, timeout: float = 60) -> None:
    """Until process `pid` has a folder under `folder` open: it is listing the inputs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(folder)):
                        return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never listed {folder}")


def test_an_interrupted_overwrite_resumes_without_the_old_files(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """Run 1 writes overlays at alpha 0.1; run 2 redoes them at 0.9 with --overwrite and is Ctrl-C'd after three
    files; run 3 resumes without --overwrite. Before: run 3 skipped every file as done, and all but the first
    few still held the alpha-0.1 overlay while the folder's record said 0.9."""
    paths = photos(tmp_path / "in", 10)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    common = [str(tmp_path / "in"), "--output", "overlay", "--format", "png", "--no-progress"]
    with gated_server(tiny_onnx_model) as (server, gate):
        assert main([*common, "--out", str(out), "--server", server.url, "--alpha", "0.1"]) == 0
        assert main([*common, "--out", str(fresh), "--server", server.url, "--alpha", "0.9"]) == 0
        assert outputs(out).keys() == outputs(fresh).keys() and len(outputs(out)) == len(paths)
        assert all(outputs(out)[name] != outputs(fresh)[name] for name in outputs(out))
        gate.hold()
        gate.allow(3)
        run = Segment(*common[:-1], "--out", str(out), "--server", server.url, "--alpha", "0.9", "--overwrite",
                      "-j", "1")
        try:
            gate.wait_arrived(4)  # three files made, the fourth in progress
            run.ctrl_c()
            run.wait_line("segment: interrupted: finishing the 1 files in progress")
            gate.open()
            assert run.wait(30) == 130
        finally:
            run.kill()
        assert "segment: 4 written, 0 skipped (already done), 0 failed, 10 total; interrupted, 6 not done" in run.err
        assert main([*common, "--out", str(out), "--server", server.url, "--alpha", "0.9"]) == 0
    assert outputs(out) == outputs(fresh)  # every file at alpha 0.9, as a fresh run makes them
