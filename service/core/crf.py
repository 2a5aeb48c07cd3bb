"""DeepLab-v2's dense CRF post-processing (Krähenbühl & Koltun's fully connected CRF) on softmax scores.

Uses `pydensecrf2` (the maintained fork of pydensecrf, MIT), an optional dependency: `pip install
'.[crf]'`. Torch-free: `POST /segment?crf=true` and `segment-export evaluate --crf` both use it.

Default parameters are DeepLab-v2's for ResNet-101 on VOC, as kazuto1011/deeplab-pytorch's `voc12.yaml`
records them: 10 mean-field iterations, appearance kernel weight 4 with σ_xy 67 and σ_rgb 3, smoothness
kernel weight 3 with σ_xy 1.

The service runs it in worker processes (`CrfPool`), not in its own: pydensecrf's `inference()` holds the
interpreter lock throughout (0.3 s for a 640x480 photo on the demo model, 6.8 s for a 513x513 noise image), and in a
codec thread it froze the event loop, `/healthz` included, for as long.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from .letterbox import LetterboxInfo
from .priorities import bulk_places

# The CRF workers' nice value: as the service's other bulk CPU work (huge decodes, /results renders), they take the
# CPUs only when the server process, its event loop and model runs, leave them.
WORKER_NICENESS = 10


class CrfUnavailable(RuntimeError):
    """pydensecrf2 is not installed."""


class CrfBusy(RuntimeError):
    """Every place in the CRF pool (its processes and the queue before them) is taken, or the pool is shut down:
    retry shortly. `bulk`: a bulk request's refusal, the bulk refinements holding their share of the places."""

    def __init__(self, message: str, bulk: bool = False) -> None:
        super().__init__(message)
        self.bulk = bulk


class CrfFailed(RuntimeError):
    """A CRF worker process died (killed, out of memory) during a refinement; the next one starts a fresh pool."""


@dataclass(frozen=True)
class CrfParams:
    """Mean-field iterations and the two pairwise kernels (DeepLab-v2's names in comments)."""

    iterations: int = 10  # ITER_MAX
    bilateral_weight: float = 4.0  # BI_W
    bilateral_xy: float = 67.0  # BI_XY_STD
    bilateral_rgb: float = 3.0  # BI_RGB_STD
    gaussian_weight: float = 3.0  # POS_W
    gaussian_xy: float = 1.0  # POS_XY_STD


def available() -> bool:
    """Whether pydensecrf2 can be imported here."""
    try:
        _densecrf()
    except CrfUnavailable:
        return False
    return True


def _densecrf():  # type: ignore[no-untyped-def]
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise CrfUnavailable("CRF post-processing needs pydensecrf2: pip install 'segment-service[crf]'") from None
    return dcrf


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """Refined uint8 labels [H, W] from an RGB uint8 image [H, W, 3] and class probabilities [C, H, W]."""
    dcrf = _densecrf()
    c, h, w = probs.shape
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 {(h, w, 3)} to match the scores, got {image.dtype} {image.shape}")
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_xy, compat=params.gaussian_weight)
    crf.addPairwiseBilateral(sxy=params.bilateral_xy, srgb=params.bilateral_rgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_weight)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(c, h, w)
    return q.argmax(0).astype(np.uint8)


def probs_from_labels(labels: np.ndarray, num_classes: int, confidence: np.ndarray | float = 0.7) -> np.ndarray:
    """Scores [C, H, W] for a model that only outputs labels (the ONNX contract): the predicted class gets
    `confidence` (a scalar, or per-pixel values in 0..1), the others share the rest. The service always passes
    the constant 0.7 (`refine_region` leaves the default): it does not read a model's `confidence` output."""
    conf = np.asarray(confidence, dtype=np.float32)
    lo = 1.0 / num_classes + 1e-3  # keep the predicted class the most likely one
    conf = np.clip(conf, lo, 1.0 - 1e-3)
    rest = (1.0 - conf) / (num_classes - 1)
    probs = np.broadcast_to(rest, labels.shape)[None].repeat(num_classes, 0).astype(np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), np.broadcast_to(conf, labels.shape)[None], axis=0)
    return probs


def _region(info: LetterboxInfo) -> tuple[slice, slice]:
    """Where the image sits in its letterboxed canvas."""
    return slice(info.top, info.top + info.new_h), slice(info.left, info.left + info.new_w)


def _on_canvas(canvas: np.ndarray, info: LetterboxInfo, region_labels: np.ndarray) -> np.ndarray:
    """Labels [canvas H, W]: `region_labels` where the image sits, 0 in the padding."""
    labels = np.zeros(canvas.shape[:2], np.uint8)
    labels[_region(info)] = region_labels
    return labels


def crf_on_canvas(canvas: np.ndarray, probs: np.ndarray, info: LetterboxInfo, params: CrfParams) -> np.ndarray:
    """Dense CRF over the image region of a canvas (padding excluded); labels [canvas H, W], 0 elsewhere."""
    rows, cols = _region(info)
    return _on_canvas(canvas, info, dense_crf(np.ascontiguousarray(canvas[rows, cols]),
                                              np.ascontiguousarray(probs[:, rows, cols]), params))


def refine_region(image: np.ndarray, labels: np.ndarray, num_classes: int, params: CrfParams) -> np.ndarray:
    """Refined uint8 labels [H, W] from a model's uint8 labels [H, W] and the RGB uint8 image [H, W, 3] they are for
    (`probs_from_labels`, then `dense_crf`). What a CRF worker process runs: its arguments are the image region of
    the canvas and its labels, all uint8, so that little crosses the process boundary (the scores, C float32 values
    a pixel, are made on the far side)."""
    return dense_crf(np.ascontiguousarray(image), probs_from_labels(labels, num_classes), params)


def refine_labels(canvas: np.ndarray, labels: np.ndarray, info: LetterboxInfo, num_classes: int,
                  params: CrfParams = CrfParams()) -> np.ndarray:
    """The model's labels [canvas H, W] refined by the dense CRF over the image region of its canvas, in this
    process: labels [canvas H, W], 0 in the padding. `CrfPool.refine` gives the same in a worker process."""
    region = _region(info)
    return _on_canvas(canvas, info, refine_region(canvas[region], labels[region], num_classes, params))


def _worker_started() -> None:
    """In each CRF worker process, first: lower its CPU priority (`WORKER_NICENESS`), ignore SIGINT (Ctrl-C in a
    terminal reaches the whole process group, and the server drains on it: the refinement its request waits for
    must finish), and exit once the server process is gone (killed: nothing else would end a worker waiting for
    work)."""
    os.nice(WORKER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="crf-parent", daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # ready once the parent process has ended
    os._exit(0)


class CrfPlace:
    """One place in a `CrfPool`, taken when a `crf=true` request is admitted (`CrfPool.reserve`), before its decode
    and model run: a request the pool has no room for is refused before it costs them. `release` gives it back
    (again: nothing); a refinement it is handed to gives it back when its worker is done instead. Used on the
    event loop only: no lock."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Give the place back, unless a refinement took it (or it was given back already)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def hand_over(self) -> Callable[[], None]:
        """What gives the place back, for the refinement that now holds it; `release` does nothing afterwards."""
        release, self._release = self._release, None
        if release is None:
            raise RuntimeError("a CRF place serves one refinement")
        return release


class CrfPool:
    """Dense CRFs in up to `processes` worker processes, at most `queued` more waiting for one (`CrfBusy`
    beyond: never an endless queue). The processes are started on the first refinement, not before: a server
    whose clients never ask for the CRF pays nothing for it.

    Spawned, not forked: the server process runs onnxruntime's threads, and a fork copies their locks in whatever
    state they are. A worker that dies fails the refinements in flight (`CrfFailed`) and the next one gets a fresh
    pool."""

    def __init__(self, processes: int, queued: int | None = None, bulk_share: float = 1.0) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.processes = processes
        self.capacity = processes + (processes if queued is None else queued)
        # The places bulk requests' refinements may hold together (`priority=bulk`).
        self.bulk_places = bulk_places(self.capacity, bulk_share)
        self._bulk_held = 0
        # Taken on the event loop, given back when the worker is done (the executor's thread): a refinement
        # whose request was cancelled keeps its place while it still runs.
        self._places = threading.BoundedSemaphore(self.capacity)
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def reserve(self, bulk: bool = False) -> CrfPlace:
        """A place for one refinement; `CrfBusy` when every place is taken, or for a `bulk` request when the bulk
        refinements hold their share of them."""
        if bulk:
            with self._lock:
                if self._bulk_held >= self.bulk_places:
                    raise CrfBusy(f"bulk refinements hold their {self.bulk_places} of the {self.capacity} CRF "
                                  "places", bulk=True)
                self._bulk_held += 1
        if not self._places.acquire(blocking=False):
            if bulk:
                self._bulk_given_back()
            raise CrfBusy(f"every CRF process is busy and {self.capacity - self.processes} more refinements wait")
        return CrfPlace(self._release_bulk if bulk else self._places.release)

    def _bulk_given_back(self) -> None:
        with self._lock:
            self._bulk_held -= 1

    def _release_bulk(self) -> None:
        self._bulk_given_back()
        self._places.release()

    async def refine(self, canvas: np.ndarray, labels: np.ndarray, info: LetterboxInfo, num_classes: int,
                     params: CrfParams = CrfParams(), place: CrfPlace | None = None) -> np.ndarray:
        """`refine_labels`, in a worker process, in `place` (None: one taken now). Raises `CrfBusy` when the pool
        is full (or shut down), `CrfFailed` when the worker died."""
        release = (place or self.reserve()).hand_over()
        region = _region(info)
        # Views: the executor's feeder thread pickles them (a copy of the region alone), not the event loop.
        args = (canvas[region], labels[region], num_classes, params)
        try:
            executor, future = self._submit(args)
        except BaseException:
            release()
            raise
        future.add_done_callback(lambda _: release())
        try:
            refined_region = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._discard(executor)
            raise CrfFailed("the dense CRF's worker process died; a retry starts a fresh one") from None
        return _on_canvas(canvas, info, refined_region)

    def _submit(self, args: tuple[object, ...]) -> tuple[ProcessPoolExecutor, Future[np.ndarray]]:
        executor = self._current()
        try:
            return executor, executor.submit(refine_region, *args)
        except BrokenProcessPool:  # a worker died since the last refinement: once more, on a fresh pool
            self._discard(executor)
            executor = self._current()
            return executor, executor.submit(refine_region, *args)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise CrfBusy("the server is stopping")
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self.processes, multiprocessing.get_context("spawn"),
                                                     initializer=_worker_started)
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes now, without waiting for refinements still running: by the time the server
        closes it, every request has been answered or cut off, so none is waiting for them (and a stop must not
        wait seconds for a refinement nobody will read). Refinements asked for afterwards get `CrfBusy`."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is None:
            return
        # The executor's own table is the only handle on its processes (`terminate_workers` came in Python 3.14),
        # and `shutdown` empties it.
        for process in list((executor._processes or {}).values()):
            process.terminate()
        # Waiting costs milliseconds once they are ended, and frees the executor's queues, named semaphores: a server
        # that then ends by SIGTERM runs no exit handler, and multiprocessing's resource tracker, left to clean
        # them up, warned of "leaked semaphore objects" on every stop.
        executor.shutdown(wait=True, cancel_futures=True)
