"""The synthetic clip the `segment-webcam` tests feed the client, and reading a video back frame by frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

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
