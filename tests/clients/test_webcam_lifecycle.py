"""`segment-webcam` at both ends of a run against a real server: started while the server still warms up, and
ended with Ctrl-C (the way a headless camera recording ends)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients import webcam
from clients.webcam import bgr_palette, main
from service.client import SegmentClient
from service.core.outputs.masks import blend_overlay
from tests.clients.conftest import warming_server
from tests.clients.webcam_helpers import FRAMES, _read_all, _write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    _write_video(path)
    return path


def _overlays(url: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    """What the run should write for `frames`: each blended with its own labels from the server."""
    with SegmentClient(url) as client:
        palette = bgr_palette(client.classes())
        expected = []
        for frame in frames:
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            expected.append(blend_overlay(frame, client.segment(jpeg.tobytes(), "labels").array(), palette, 0.5))
    return expected


def test_a_run_started_while_the_server_warms_up_waits_for_it(tiny_onnx_model: Path, video: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Before: every frame sent during warm-up came back 503 `not_ready` and went out unsegmented (exit 1, or
    exit 2 once --max-failures frames had failed)."""
    out = tmp_path / "seg.mkv"
    with warming_server(tiny_onnx_model) as (url, release):
        timer = threading.Timer(2.5, release.set)  # the model is warm 2.5 s after the run starts
        timer.start()
        try:
            status = main([str(video), "--server", url, "--out", str(out), "--no-hud", "--inflight", "2",
                           "--wait", "20"])
        finally:
            timer.cancel()
        err = capsys.readouterr().err
        assert status == 0, err
        assert f"{FRAMES} frames, 0 errors" in err
        outputs = _read_all(out)
        expected = _overlays(url, _read_all(video))
    assert len(outputs) == FRAMES
    for index, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"frame {index}")


def test_a_server_that_never_gets_ready_is_one_clear_line(tiny_onnx_model: Path, video: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with warming_server(tiny_onnx_model) as (url, _):
        started = time.monotonic()
        assert main([str(video), "--server", url, "--out", str(tmp_path / "o.mkv"), "--wait", "1"]) == 2
        assert time.monotonic() - started < 5
    assert "not ready after 1s" in capsys.readouterr().err
    assert not (tmp_path / "o.mkv").exists()


def test_ctrl_c_closes_the_video_prints_the_summary_and_exits_130(server_url: str, video: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the sixth frame's request is on the wire (a real one, to the real server). Before: a
    KeyboardInterrupt traceback, no summary."""
    calls = itertools.count()
    send = webcam._request

    def request(client: object, jpeg: bytes) -> tuple[np.ndarray, float]:
        if next(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return send(client, jpeg)  # type: ignore[arg-type]

    monkeypatch.setattr(webcam, "_request", request)
    out = tmp_path / "seg.mkv"
    handler = signal.getsignal(signal.SIGINT)
    try:
        status = main([str(video), "--server", server_url, "--out", str(out), "--no-hud", "--inflight", "1"])
    except KeyboardInterrupt:
        status = None
    assert status == 130
    assert signal.getsignal(signal.SIGINT) is handler  # called with arguments: Ctrl-C is the caller's again
    err = capsys.readouterr().err
    outputs = _read_all(out)
    assert 1 <= len(outputs) < FRAMES, "the run went on after Ctrl-C"
    assert f"{len(outputs)} frames, 0 errors" in err and "interrupted" in err, err
    expected = _overlays(server_url, _read_all(video)[: len(outputs)])
    for index, (got, want) in enumerate(zip(outputs, expected, strict=True)):  # the frames before, in order
        np.testing.assert_array_equal(got, want, err_msg=f"frame {index}")
