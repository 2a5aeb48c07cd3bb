"""Fixed-shape execution: one onnxruntime session (or, bound, one per concurrent batch) per bucket size, each of
which only ever sees its one input shape, and the runner that pads batches to those buckets.

cuDNN re-plans every convolution when a session's input shape changes (300 ms a call on an H100 while the batch
size alternated), so on a GPU every batch runs padded to a bucket whose session was built and warmed for that
shape alone. Torch-free and HTTP-free, like the rest of the core.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from .bound import BoundRun, InstancePool, IoBinding
from .buckets import batch_plan, bucket_for, fill_bucket, padding_fraction
from .contract import INPUT_NAME, LABELS_OUTPUT, ContractError, LabelsShapeError
from .handoff import WorkerThreads
from .letterbox import pad_canvas
from .sessions import memory_in_use

log = logging.getLogger(__name__)

T = TypeVar("T")
OnEachThread = Callable[[Callable[[], T]], list[T]]  # runs a function once on each of a set of threads, at once


def _on_fresh_threads(count: int, fn: Callable[[], T]) -> list[T]:
    """`fn()` on `count` new threads at once (offline callers, who have no threads of their own to warm)."""
    threads = WorkerThreads(count, "warm")
    try:
        return threads.run_on_each(fn)
    finally:
        threads.shutdown()


@dataclass(frozen=True)
class Binding:
    """Bound execution for every bucket (`service.core.bound`): the mode, where the buffers live ('cuda' or
    'cpu'; the runner's device), and how many sessions per bucket (one per concurrent batch)."""

    mode: IoBinding
    device: str
    instances: int = 1


@dataclass
class BucketSession:
    """One bucket's session(s), and what they have run: the proof that each only ever saw one input shape."""

    size: int
    session: ort.InferenceSession | None = None
    pool: InstancePool | None = None  # bound execution: one bound session per concurrent batch
    memory_bytes: int | None = None
    warmup_s: float | None = None
    run_s: float | None = None  # one steady-state run (the last warm-up run): the batch plan's cost
    runs: int = 0
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    threads: set[str] = field(default_factory=set)  # the threads that ran it (CUDA makes handles per thread)
    in_flight: int = 0
    max_overlap: int = 0  # the most runs of this bucket in flight at once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        """Every session of this bucket."""
        if self.pool is not None:
            return [run.session for run in self.pool.runs]
        return [self.session] if self.session is not None else []

    def _record(self, batch: np.ndarray) -> None:
        """Count a run of `batch`; the caller holds `_lock`."""
        self.runs += 1
        self.shapes.add(batch.shape)
        self.threads.add(threading.current_thread().name)

    def _run_plain(self, batch: np.ndarray) -> np.ndarray:
        assert self.session is not None, "bucket session used before it was built"
        (labels,) = self.session.run([LABELS_OUTPUT], {INPUT_NAME: batch})
        return labels

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Labels for a batch of exactly this bucket's size. Thread-safe (ORT's run is; bound runs are handed
        out one batch at a time)."""
        with self._lock:
            self._record(batch)
            self.in_flight += 1
            self.max_overlap = max(self.max_overlap, self.in_flight)
        try:
            return self.pool.run(batch) if self.pool is not None else self._run_plain(batch)
        finally:
            with self._lock:
                self.in_flight -= 1

    def warm_together(self, batch: np.ndarray, on_each_thread: OnEachThread) -> None:
        """Run a batch of this bucket on each thread that will run batches, all at once, as concurrent batches
        will. A run that overlaps another needs working memory of its own, and onnxruntime's CUDA provider makes
        a thread's cuDNN/cuBLAS handles (per session) on that thread's first run; made here, they are not made
        by the first batches of the bucket after readiness."""
        on_each_thread(lambda: self.run(batch))  # a run's exception is raised here

    def warm(self, batch: np.ndarray, repeats: int) -> float:
        """Run every session of the bucket `repeats` times (planning, allocation, graph capture); seconds of
        the last run. Labels of another shape than the batch's raise LabelsShapeError: the model is off the
        contract, and every request would fail the same way."""
        with self.pool.each_alone() if self.pool is not None else contextlib.nullcontext() as instances:
            runners = [run.run for run in instances] if instances is not None else [self._run_plain]
            elapsed = 0.0
            for run in runners:
                for _ in range(repeats):
                    with self._lock:
                        self._record(batch)
                    start = time.perf_counter()
                    labels = run(batch)
                    elapsed = time.perf_counter() - start
                    LabelsShapeError.check(labels.shape, batch.shape)
        return elapsed

    def describe(self) -> dict[str, object]:
        """What `/readyz` reports for this bucket."""
        return {"batch_size": self.size, "memory_bytes": self.memory_bytes,
                "warmup_ms": None if self.warmup_s is None else round(self.warmup_s * 1000, 1),
                "run_ms": None if self.run_s is None else round(self.run_s * 1000, 2), "runs": self.runs,
                "sessions": len(self.sessions)}


class FixedShapeRunner:
    """Runs any number of images as batches padded to bucket sizes, one session (or, bound, one per concurrent
    batch) per bucket.

    Every bucket session sees exactly one input shape, [size, S, S, 3] with S the model's inference size, and is
    built with that shape fixed (`make_bucket_session(size)`). An input of another height or width (only offline
    callers send those) goes to the separate dynamic session given to `adopt_dynamic`.
    """

    def __init__(self, sizes: Sequence[int], input_hw: tuple[int, int], pad_rgb: Sequence[int],
                 make_bucket_session: Callable[[int], ort.InferenceSession], on_gpu: bool,
                 binding: Binding | None = None, device_id: int = 0, concurrent_batches: int = 1) -> None:
        self.buckets = [BucketSession(size) for size in sorted(sizes)]
        self.concurrent_batches = concurrent_batches  # batches in flight at once: warm-up overlaps that many
        self.sizes = [b.size for b in self.buckets]
        self.input_hw = input_hw
        self.pad_rgb = tuple(pad_rgb)
        self.on_gpu = on_gpu
        self.device_id = device_id  # the CUDA device: bound buffers and memory readings
        self.binding = binding
        self._make_bucket_session = make_bucket_session
        self._other_shapes: ort.InferenceSession | None = None
        self._warned_other_shape = False
        self._lock = threading.Lock()
        self.real_rows = 0
        self.padded_rows = 0
        self.plan: dict[int, int] = {}  # from `batch_plan`, once warm-up has timed every bucket

    def adopt_dynamic(self, session: ort.InferenceSession) -> None:
        """The session with free dimensions (the one the contract was checked on), for inputs of other sizes."""
        self._other_shapes = session

    def _build(self, bucket: BucketSession) -> None:
        height, width = self.input_hw
        if self.binding is None:
            bucket.session = self._make_bucket_session(bucket.size)
            return
        b = self.binding
        bucket.pool = InstancePool([BoundRun(self._make_bucket_session(bucket.size), (bucket.size, height, width, 3),
                                             b.device, self.device_id) for _ in range(b.instances)])
        bucket.session = bucket.pool.runs[0].session

    def warm_up(self, each_run: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
                on_each_thread: OnEachThread | None = None) -> None:
        """Build every bucket's session(s) and run each on its one shape, recording time and memory. `each_run`
        is entered around each bucket's runs (not its session build). `on_each_thread(fn)` runs `fn` at once on
        every thread that will run batches (`WorkerThreads.run_on_each`); without it, on as many fresh threads as
        batches run at once."""
        if on_each_thread is None and self.concurrent_batches > 1:
            on_each_thread = functools.partial(_on_fresh_threads, self.concurrent_batches)
        mark = memory_in_use(self.on_gpu, self.device_id)
        height, width = self.input_hw
        # Plain: the first run plans and allocates, the second proves and times the steady state. A CUDA graph
        # is captured within the first runs (onnxruntime versions differ on which), so it gets one more, replayed.
        repeats = 3 if self.binding is not None and self.binding.mode == "cuda_graph" else 2
        for bucket in self.buckets:
            start = time.perf_counter()
            batch = fill_bucket([pad_canvas(height, width, self.pad_rgb)], bucket.size, self.pad_rgb)
            try:
                if bucket.session is None:
                    self._build(bucket)
                with each_run():
                    bucket.run_s = bucket.warm(batch, repeats)
                if on_each_thread is not None and bucket.pool is None:  # a pool runs each session on its own thread
                    with each_run():
                        bucket.warm_together(batch, on_each_thread)
            except Exception as exc:
                if self.binding is None or isinstance(exc, ContractError):
                    raise
                # Name the mode: onnxruntime's own message (e.g. a graph it cannot capture) does not.
                raise RuntimeError(f"bucket {bucket.size} with io_binding '{self.binding.mode}': {exc}") from exc
            bucket.warmup_s = time.perf_counter() - start
            now = memory_in_use(self.on_gpu, self.device_id)
            if mark is not None and now is not None:
                bucket.memory_bytes = max(0, now - mark)
            mark = now
            log.info("bucket %d warmed in %.2fs (%s bytes)", bucket.size, bucket.warmup_s, bucket.memory_bytes)
        self.plan = batch_plan({b.size: b.run_s for b in self.buckets if b.run_s is not None})
        log.info("batch plan (images waiting: images run now) %s", self.plan)

    def take(self, count: int) -> int:
        """How many of `count` waiting images to run now (`batch_plan`); all of them until warm-up has timed
        the buckets."""
        return self.plan.get(count, count)

    def expected_s(self, count: int) -> float:
        """Seconds a batch of `count` images is expected to take: its bucket's warm-up run (0 until timed)."""
        return self._bucket(min(count, self.sizes[-1])).run_s or 0.0

    def _bucket(self, count: int) -> BucketSession:
        """The bucket that runs `count` images (at most the largest bucket's size)."""
        return self.buckets[self.sizes.index(bucket_for(count, self.sizes))]

    def padded_size(self, count: int) -> int:
        """The rows a batch of `count` images runs as (summed over chunks of the largest bucket)."""
        largest = self.sizes[-1]
        full, rest = divmod(count, largest)
        return full * largest + (bucket_for(rest, self.sizes) if rest else 0)

    def run_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Labels [N, H, W] for N letterboxed uint8 images: padded rows are computed and dropped, never returned."""
        if images[0].shape[:2] != self.input_hw:
            return self._run_other_shape(np.stack(images))
        largest = self.sizes[-1]
        parts = []
        for start in range(0, len(images), largest):
            chunk = images[start:start + largest]
            bucket = self._bucket(len(chunk))
            labels = bucket.run(fill_bucket(chunk, bucket.size, self.pad_rgb))
            parts.append(labels[:len(chunk)])
            with self._lock:
                self.real_rows += len(chunk)
                self.padded_rows += bucket.size - len(chunk)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_other_shape(self, batch: np.ndarray) -> np.ndarray:
        if self._other_shapes is None:
            raise RuntimeError(f"input {batch.shape} differs from the inference size {self.input_hw} and no "
                               "dynamic session was adopted")
        if not self._warned_other_shape:
            self._warned_other_shape = True
            log.warning("input %s differs from the inference size %s: running it on the dynamic session (slow "
                        "on CUDA while its shape keeps changing)", batch.shape, self.input_hw)
        (labels,) = self._other_shapes.run([LABELS_OUTPUT], {INPUT_NAME: batch})
        return labels

    def describe(self) -> dict[str, object]:
        """Buckets, padding waste and the execution mode, for `/readyz`."""
        return {"buckets": [b.describe() for b in self.buckets],
                "batch_plan": {str(n): k for n, k in self.plan.items() if k != n},
                "io_binding": self.binding.mode if self.binding is not None else "off",
                "padding_fraction": padding_fraction(self.real_rows, self.padded_rows)}
