"""Where `segment-webcam`'s frames come from and go to: a camera or video file in, a window and/or a video file out
(OpenCV's capture, GUI and writer)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np

WINDOW = "segment-webcam"
_FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1", ".mov": "mp4v"}


def open_capture(source: str) -> cv2.VideoCapture:
    """A camera index ("0") or a video file path."""
    capture = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"segment-webcam: cannot open video source {source!r}")
    return capture


def is_recording(capture: cv2.VideoCapture, source: str) -> bool:
    """Whether the source is a recording (a video file, whose length is known), which can wait for the server,
    rather than a camera or a stream (unknown length), whose frames come whether they are read or not."""
    return not source.isdigit() and capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0


def has_gui() -> bool:
    """Whether this OpenCV build can open windows (opencv-python-headless cannot)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() != "NONE"
    return True  # unknown layout: let imshow decide


NO_GUI = ("segment-webcam: this OpenCV build has no GUI (opencv-python-headless, as the serve extra installs), "
          "so it cannot show a window. Write a video with --out FILE instead, or replace it with the GUI build: "
          "pip uninstall -y opencv-python-headless && pip install opencv-python")


class Sink:
    """Where finished frames go: a window, a video file, or both."""

    def __init__(self, out: Path | None, show: bool, fps: float, fourcc: str | None) -> None:
        self.out, self.show, self.fps = out, show, fps
        self.fourcc = fourcc or _FOURCC_BY_SUFFIX.get(out.suffix.lower(), "mp4v") if out else None
        self.writer: cv2.VideoWriter | None = None
        self.quit = False
        self.window = False  # a window was opened: close() destroys it

    def put(self, frame: np.ndarray) -> None:
        """Write and/or show one frame; a key q or Esc in the window sets `quit`."""
        if self.out is not None:
            if self.writer is None:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                self.writer = cv2.VideoWriter(str(self.out), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                              (frame.shape[1], frame.shape[0]))
                if not self.writer.isOpened():
                    raise SystemExit(f"segment-webcam: cannot write {self.out} with codec {self.fourcc!r}")
            self.writer.write(frame)
        if self.show:
            try:
                cv2.imshow(WINDOW, frame)
            except cv2.error as exc:
                raise SystemExit(NO_GUI) from exc
            self.window = True
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.quit = True

    def close(self) -> None:
        """Finish the video file (its index is written on release) and close the window."""
        if self.writer is not None:
            self.writer.release()
        if self.window:
            with contextlib.suppress(cv2.error):  # never mask the error that ended the loop
                cv2.destroyAllWindows()
