"""Ctrl-C on `segment-webcam` as a user gives it: a real SIGINT to a real `segment-webcam` process whose requests wait
in a real server's model runs (held at a gate). It ends at once, with the video closed and the summary: the answers
still on their way would be thrown away. Before: the process waited for each of them, up to the client's 60 s
timeout, and a second Ctrl-C did not end that wait either."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.test_webcam_outage import Webcam, write_clip
from tests.clients.webcam_helpers import _read_all
from tests.service.gated_server import GatedServer


@pytest.fixture
def gated(tiny_onnx_model: Path) -> Iterator[GatedServer]:
    server = GatedServer(tiny_onnx_model, max_batch_size=1, concurrent_batches=1, worker_threads=2)
    with server.running():
        yield server


# One Ctrl-C; a second, impatient; and Ctrl-C held down (a press every 10 ms until the process is gone). Before, a
# press after the first that came while the run was closing the video or the interpreter was exiting (about 0.1 s
# after the first on a loaded machine) killed the process by SIGINT (status -2, not 130), or cut the closing short.
@pytest.mark.parametrize(("presses", "apart_s"), [(1, 0.0), (2, 0.1), (100, 0.01)])
def test_ctrl_c_ends_the_run_at_once_with_the_video_closed(gated: GatedServer, tmp_path: Path, presses: int,
                                                           apart_s: float) -> None:
    clip, out = write_clip(tmp_path / "clip.avi", 200), tmp_path / "seg.mkv"
    run = Webcam(str(clip), "--server", gated.live.url, "--out", str(out), "--no-hud", "--inflight", "4")
    try:
        deadline = time.monotonic() + 60
        while len(gated.runs) < 10:  # some frames segmented and written
            assert run.proc.poll() is None and time.monotonic() < deadline, run.err
            time.sleep(0.02)
        gated.gate.clear()  # the device busy from the next run on: four frames on their way, unanswered
        gated.wait_metric("segment_batches_in_flight", 1)
        time.sleep(0.3)
        assert run.proc.poll() is None, run.err
        pressed = time.monotonic()
        for press in range(presses):
            if press:
                time.sleep(apart_s)
            if run.proc.poll() is not None:
                break
            run.proc.send_signal(signal.SIGINT)
        code = run.wait(20)
        took = time.monotonic() - pressed
    finally:
        gated.gate.set()
        run.kill()
    assert code == 130, run.err
    assert took < 3.0, (took, run.err)  # the held model runs (up to 60 s) not waited for
    frames, errors = run.summary()
    assert "interrupted" in run.err and "Traceback" not in run.err, run.err
    assert errors == 0 and 10 <= frames < 200
    assert len(_read_all(out)) == frames  # the video file finished properly, every frame written in it
