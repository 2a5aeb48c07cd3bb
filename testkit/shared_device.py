"""An emulated GPU on which batches in flight overlap, fitted to an H200's raw onnxruntime figures.

A batch costs a gap, time in which the device's compute units have nothing of it to do (the input's copy in,
kernel launches, the labels' copy out, synchronisation), and compute, shared with the other batches computing at
the same time (processor sharing: k batches each progress at 1/k speed). One batch at a time thus takes gap +
compute, the raw batch time, and two in flight hide each other's gaps. The H200's raw figures for
deeplabv3_resnet101 at 513 (fp16, NHWC) give the same gap at both sizes measured: batch 8 takes 22.1 ms alone and
two threads on one session served 13 % more img/s (a 2.5 ms gap), batch 16 41.8 ms and 7 % more (2.7 ms).
"""

from __future__ import annotations

import itertools
import threading
import time

# Seconds of each batch (before scaling) that other batches' compute can overlap.
H200_GAP_S = 2.6e-3


class SharedDevice:
    """Batches run through `run(seconds, gap_s)`: half the gap, compute shared with the others, the other half."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._remaining: dict[int, float] = {}  # compute seconds left, per batch computing now
        self._clock = time.perf_counter()
        self._ids = itertools.count()

    def run(self, seconds: float, gap_s: float) -> None:
        """Take as long as a batch of `seconds` alone, less what overlaps with others (blocks; no GIL held)."""
        time.sleep(gap_s / 2)
        self._compute(max(0.0, seconds - gap_s))
        time.sleep(gap_s / 2)

    def computing(self) -> int:
        """Batches computing now."""
        with self._changed:
            return len(self._remaining)

    def _compute(self, work_s: float) -> None:
        with self._changed:
            self._advance()
            job = next(self._ids)
            self._remaining[job] = work_s
            self._changed.notify_all()  # the others slow down: they recompute their finish
            while True:
                self._advance()
                left = self._remaining[job]
                if left <= 0:
                    del self._remaining[job]
                    self._changed.notify_all()  # the others speed up
                    return
                self._changed.wait(left * len(self._remaining))

    def _advance(self) -> None:
        now = time.perf_counter()
        if self._remaining:
            share = (now - self._clock) / len(self._remaining)
            for job in self._remaining:
                self._remaining[job] -= share
        self._clock = now
