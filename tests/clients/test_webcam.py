"""`segment-webcam` (clients.webcam) on a synthetic video against a real server, headless with --out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.webcam import bgr_palette, main
from service.client import SegmentClient
from service.outputs.masks import blend_overlay

FRAMES, WIDTH, HEIGHT = 20, 96, 72


def _write_video(path: Path) -> None:
    """Moving shapes on a textured background, MJPG in AVI (what a cheap webcam records)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    assert writer.isOpened()
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for i in range(FRAMES):
        frame = np.dstack([(xx * 2 + i * 5) % 256, (yy * 3) % 256, np.full_like(xx, 90)]).astype(np.uint8)
        cv2.circle(frame, (10 + 3 * i, 36), 14, (0, 0, 255), -1)
        cv2.rectangle(frame, (70 - 2 * i, 5), (90 - 2 * i, 25), (255, 0, 0), -1)
        writer.write(frame)
    writer.release()


def _read_all(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


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
    assert main([str(video), "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "o.avi")]) == 2
