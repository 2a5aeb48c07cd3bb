"""`segment-webcam` (clients.webcam) on a synthetic video against a real server, headless with --out."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients import webcam, webcam_video
from clients.webcam import bgr_palette, main
from service.client import SegmentClient, SegmentConnectionError, SegmentResult
from service.core.outputs.masks import blend_overlay, encode_labels_png
from tests.clients.webcam_helpers import FRAMES, HEIGHT, WIDTH, _read_all, _write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    _write_video(path)
    return path


def test_output_video_has_every_frame_in_order_with_overlay(server_url: str, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg.mkv"  # FFV1: lossless, so the frames can be compared exactly
    assert main([str(video), "--server", server_url, "--out", str(out), "--inflight", "3", "--no-hud"]) == 0
    inputs, outputs = _read_all(video), _read_all(out)
    assert len(inputs) == FRAMES
    assert len(outputs) == FRAMES
    with SegmentClient(server_url) as client:
        palette = bgr_palette(client.classes())
        coloured = 0
        for index, (frame, got) in enumerate(zip(inputs, outputs, strict=True)):
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            labels = client.segment(jpeg.tobytes(), "labels").array()
            expected = blend_overlay(frame, labels, palette, 0.5)
            # Exactly this frame's overlay: a reordered pipeline would put a neighbour's (moved shapes) here.
            np.testing.assert_array_equal(got, expected, err_msg=f"frame {index}")
            painted = labels != 0
            coloured += int(painted.sum())
            assert np.array_equal(got[~painted], frame[~painted])
    assert coloured > 0, "the model predicted no foreground at all: the overlay check would be vacuous"
    differs = [not np.array_equal(o, i) for o, i in zip(outputs, inputs, strict=True)]
    assert all(differs)


def test_hud_and_max_frames(server_url: str, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg.avi"
    assert main([str(video), "--server", server_url, "--out", str(out), "--max-frames", "7",
                 "--inflight", "2"]) == 0
    frames = _read_all(out)
    assert len(frames) == 7
    assert frames[0].shape == (HEIGHT, WIDTH, 3)
    hud = frames[3][2:20, 2:60]
    assert hud.min() < 40 and hud.max() > 200  # white text on the black strip


def test_bad_source_and_server(server_url: str, tmp_path: Path, video: Path) -> None:
    with pytest.raises(SystemExit, match="cannot open video source"):
        main([str(tmp_path / "missing.mp4"), "--server", server_url, "--out", str(tmp_path / "o.avi")])
    assert main([str(video), "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "o.avi"), "--wait", "1"]) == 2


def test_local_mode_writes_the_same_frames_as_the_server(server_url: str, tiny_onnx_model: Path, video: Path,
                                                          tmp_path: Path) -> None:
    """--local runs the same model in this process through the service's own path: identical output video."""
    remote, local = tmp_path / "remote.mkv", tmp_path / "local.mkv"
    assert main([str(video), "--server", server_url, "--out", str(remote), "--no-hud", "--max-frames", "8"]) == 0
    assert main([str(video), "--local", str(tiny_onnx_model), "--out", str(local), "--no-hud", "--max-frames", "8",
                 "--inflight", "2", "--threads", "1"]) == 0
    remote_frames, local_frames = _read_all(remote), _read_all(local)
    assert len(local_frames) == 8
    for index, (a, b) in enumerate(zip(remote_frames, local_frames, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {index}")


def test_local_mode_with_a_missing_model_is_one_clear_line(video: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(video), "--local", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x.mkv")])
    assert "cannot load" in str(stop.value) and "nope.onnx" in str(stop.value)


def test_show_without_a_gui_build_says_what_to_do(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve extra's headless OpenCV cannot open windows: one clear message, before anything is opened."""
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  Video I/O:\n  GUI:    NONE\n")
    opened: list[str] = []
    monkeypatch.setattr(webcam, "open_capture", lambda source: opened.append(source))
    for argv in ([str(video), "--server", "http://127.0.0.1:9", "--show", "--out", "x.mkv"],
                 [str(video), "--server", "http://127.0.0.1:9"]):  # no --out: a window is the default
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert "no GUI" in str(stop.value) and "--out" in str(stop.value) and "opencv-python" in str(stop.value)
    assert opened == []


def test_gui_detection_and_a_failing_window_are_not_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:    GTK3\n")
    assert webcam_video.has_gui()
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:    NONE\n")
    assert not webcam_video.has_gui()

    def no_window(*args: object) -> None:
        raise cv2.error("The function is not implemented")

    # imshow fails (a headless build behind a misleading build string): the friendly message comes out,
    # and close() does not replace it with a second cv2.error.
    monkeypatch.setattr(cv2, "imshow", no_window)
    monkeypatch.setattr(cv2, "destroyAllWindows", no_window)
    sink = webcam_video.Sink(None, True, 25.0, None)
    with pytest.raises(SystemExit) as stop:
        try:
            sink.put(np.zeros((8, 8, 3), np.uint8))
        finally:
            sink.close()
    assert "no GUI" in str(stop.value)


_CLASSES = {"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]},
                        {"id": 1, "name": "thing", "color": [255, 0, 0]}]}


class _Server:
    """Stands in for the service: class 1 on every pixel, except that the requests `fails` picks lose their
    connection (a server restart)."""

    def __init__(self, fails: Callable[[int], bool]) -> None:
        self.fails, self.calls = fails, itertools.count()

    def segment(self, data: bytes, output: str = "labels") -> SegmentResult:
        if self.fails(next(self.calls)):
            raise SegmentConnectionError("POST http://127.0.0.1:8000/segment: [Errno 104] Connection reset by peer")
        height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        body = encode_labels_png(np.ones((height, width), np.uint8), [(0, 0, 0), (255, 0, 0)])
        return SegmentResult(output, body, "image/png", None, None)


def _serve(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int], bool]) -> None:
    server = _Server(fails)
    monkeypatch.setattr(webcam, "open_segmenter", lambda args: contextlib.nullcontext((server, _CLASSES)))


def test_a_broken_connection_costs_one_frame_not_the_video(video: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _serve(monkeypatch, lambda request: request == 5)
    out = tmp_path / "seg.mkv"
    assert main([str(video), "--out", str(out), "--inflight", "1", "--no-hud"]) == 1
    inputs, outputs = _read_all(video), _read_all(out)
    assert len(outputs) == FRAMES
    plain = [index for index, (got, frame) in enumerate(zip(outputs, inputs, strict=True))
             if np.array_equal(got, frame)]
    assert plain == [5]  # that frame unsegmented, every other one with its overlay
    err = capsys.readouterr().err
    assert "frame 5: POST" in err and f"{FRAMES} frames, 1 errors" in err


def test_gives_up_after_max_failures_in_a_row(video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _serve(monkeypatch, lambda request: request != 2)  # one frame gets through: the count starts again
    out = tmp_path / "seg.mkv"
    assert main([str(video), "--out", str(out), "--inflight", "1", "--no-hud", "--max-failures", "3"]) == 2
    assert len(_read_all(out)) == 6
    err = capsys.readouterr().err
    assert "stopped after 3 frames failed in a row" in err and "6 frames, 5 errors" in err
