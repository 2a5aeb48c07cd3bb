"""`segment-webcam`'s running numbers (frames, failures, FPS, latency) and the HUD that shows them on a frame."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

_HUD_HEIGHT = 22


@dataclass
class Stats:
    """Running numbers for the HUD and the final summary."""

    frames: int = 0
    errors: int = 0
    failing: int = 0  # frames failed in a row, up to the last one
    stopped: str | None = None  # why the loop gave up before the end of the video
    interrupted: bool = False  # Ctrl-C ended the loop
    started: float = field(default_factory=time.perf_counter)
    fps: float = 0.0  # exponential moving average of the output rate
    latency_ms: float = 0.0
    _last: float | None = None

    def tick(self, latency_s: float) -> None:
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            rate = 1.0 / (now - self._last)
            self.fps = rate if self.fps == 0 else 0.9 * self.fps + 0.1 * rate
        self._last = now
        self.latency_ms = 1000 * latency_s if self.latency_ms == 0 else 0.9 * self.latency_ms + 100 * latency_s
        self.frames += 1

    @property
    def mean_fps(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


def draw_hud(frame: np.ndarray, stats: Stats, inflight: int, note: str = "") -> None:
    """FPS, latency, requests in flight and `note` (e.g. the server away), on a dark strip at the top-left."""
    text = f"{stats.fps:5.1f} FPS  {stats.latency_ms:6.0f} ms  {inflight} in flight" + (f"  {note}" if note else "")
    (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(frame, (0, 0), (min(frame.shape[1], width + 10), _HUD_HEIGHT), (0, 0, 0), cv2.FILLED)
    cv2.putText(frame, text, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
