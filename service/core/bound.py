"""Bound execution: a bucket's sessions with their input and labels in preallocated buffers (onnxruntime's
IOBinding), optionally replayed as CUDA graphs.

A CUDA graph records every kernel launch of one run and replays them with one call, which removes the
per-kernel launch cost (hundreds of kernels for a ResNet-101). onnxruntime captures one only when every node of
the graph runs on the CUDA provider and the input and output live at the same device addresses on every run. The
first holds once a session's dimensions are fixed (`service.core.sessions.fixed_dims`: the shape computations
fold into constants, so none is left for the CPU); the second is what the bound buffers here are for. A captured
session must not run two batches at once, so each bucket gets one session per concurrent batch, handed out by
`InstancePool`.

onnxruntime's CUDA provider keeps a captured graph (and its cuDNN/cuBLAS handles) per thread, captures in CUDA's
global mode (an allocation on any other thread during a capture spoils it), and does not support runs of one
graph-captured session from several threads. So each bound session runs on one thread of its own, for good:
warm-up captures its graph there, while nothing else runs, and every batch after replays it on that thread.

Without CUDA graphs ('on'), the same buffers save a device allocation per run. On the CPU provider the buffers
are host memory, which is how the tests exercise this path.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from .contract import INPUT_NAME, LABELS_OUTPUT
from .handoff import WorkerThreads
from .options import IoBinding

__all__ = ["BoundRun", "InstancePool", "IoBinding"]


class BoundRun:
    """One session whose input and labels output are bound to buffers of one shape on `device`."""

    def __init__(self, session: ort.InferenceSession, shape: tuple[int, int, int, int], device: str,
                 device_id: int = 0) -> None:
        self.session = session
        self.shape = shape
        self._host_views = device == "cpu"
        self._input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, device, device_id)
        self._labels = ort.OrtValue.ortvalue_from_shape_and_type(shape[:3], np.uint8, device, device_id)
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(INPUT_NAME, self._input)
        self._binding.bind_ortvalue_output(LABELS_OUTPUT, self._labels)
        # Its one thread (see the module's docstring); daemon, so a run hung on the device cannot hold the
        # interpreter open at exit. The hop costs microseconds against a batch's milliseconds.
        self._thread = WorkerThreads(1, f"bound-{shape[0]}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Labels for `batch` (exactly this run's shape), as an array the caller owns; run on this session's
        own thread, whichever thread calls."""
        if batch.shape != self.shape:
            raise ValueError(f"bound run of shape {self.shape} got {batch.shape}")
        return self._thread.submit(self._run_here, batch).result()

    def _run_here(self, batch: np.ndarray) -> np.ndarray:
        self._input.update_inplace(batch)
        self.session.run_with_iobinding(self._binding)
        labels = self._labels.numpy()
        # A host buffer comes back as a view of the bound memory, which the next run overwrites; a device
        # buffer is already copied to the host by `numpy()`.
        return labels.copy() if self._host_views else labels


class InstancePool:
    """The bound runs of one bucket; each run takes a free one. The batcher never runs more batches at once than
    there are instances, so a run never waits for one."""

    def __init__(self, runs: Sequence[BoundRun]) -> None:
        self.runs = list(runs)
        self.peak_in_use = 0  # the most instances ever running at once: concurrent batches, seen
        self._in_use = 0
        self._lock = threading.Lock()
        self._free: queue.SimpleQueue[BoundRun] = queue.SimpleQueue()
        for run in self.runs:
            self._free.put(run)

    @contextlib.contextmanager
    def each_alone(self) -> Iterator[list[BoundRun]]:
        """Every instance, out of use for the block (a batch waits meanwhile): warm-up runs each one, and a batch
        run on one at the same time would share its bound input and output."""
        held = [self._free.get() for _ in self.runs]
        try:
            yield held
        finally:
            for instance in held:
                self._free.put(instance)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Labels for `batch` on whichever instance is free."""
        instance = self._free.get()
        with self._lock:
            self._in_use += 1
            self.peak_in_use = max(self.peak_in_use, self._in_use)
        try:
            return instance.run(batch)
        finally:
            with self._lock:
                self._in_use -= 1
            self._free.put(instance)
