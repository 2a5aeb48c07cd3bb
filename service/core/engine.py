"""The onnxruntime engine: load a contract-conforming model, check it, warm it up, run batches.

The steps around it (decode, letterbox, unletterbox, render) are `service.core.pipeline`; what to load (providers,
precision variant) is `service.core.engine_resolve`, the contract check `service.core.contract_check`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .buckets import fill_bucket, normalise_buckets
from .contract import (
    CONFIDENCE_OUTPUT,
    INPUT_NAME,
    LABELS_OUTPUT,
    BatchSizeError,
    ContractError,
    LabelsShapeError,
    ModelMetadata,
)
from .contract_check import validate_contract
from .engine_resolve import EngineError, resolve_model_path, resolve_providers
from .fixed_shapes import Binding, FixedShapeRunner, OnEachThread
from .letterbox import pad_canvas
from .model_file import ModelFileIdentity, file_sha256
from .options import EngineOptions
from .sessions import CPU, CUDA, GPU_PROVIDERS, bucket_cuda_options, create_session, fixed_dims
from .variants import check_variant

log = logging.getLogger(__name__)

# Imported from here by callers, beside what is defined here; the resolving and the contract check live apart.
__all__ = ["CPU", "CUDA", "BatchSizeError", "Engine", "EngineError", "LabelsShapeError", "file_sha256",
           "load_engine", "resolve_model_path", "resolve_providers", "uses_fixed_shapes", "validate_contract"]


@dataclass
class Engine:
    """A loaded, checked ORT model plus what the service needs to know about it.

    `session` is the session the contract was checked on. With fixed shapes (`runner` set, the default on GPU)
    batches are padded to bucket sizes and each bucket has its own session; otherwise `session` runs every batch
    at its own size, which costs nothing on CPU.
    """

    session: ort.InferenceSession
    metadata: ModelMetadata
    model_path: Path
    provider: str
    requested_providers: list[str]
    intra_op_threads: int
    concurrent_batches: int = 1  # batches in flight at once; bound buckets have one session per batch
    device_id: int = 0  # the CUDA device, where the provider is CUDA
    has_confidence: bool = False
    runner: FixedShapeRunner | None = None
    sha256: str = ""  # of the model file: tells two files of one name and the same metadata apart (a re-export)

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def precision(self) -> str:
        return self.metadata.precision

    @property
    def name(self) -> str:
        """Model name for responses and metrics: the file name without `.onnx`."""
        return self.model_path.name.removesuffix(".onnx")

    def description(self) -> dict[str, object]:
        """What tells this model from another: what `GET /classes` says of it besides its classes, and what
        `segment` records of the model its files were made with."""
        meta = self.metadata
        return {"model": self.name, "arch": meta.arch, "precision": self.precision, "input_size": meta.input_size,
                "source": meta.source, "sha256": self.sha256}

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def padded_size(self, count: int) -> int:
        """How many rows a batch of `count` images really runs as (more than `count` only with buckets)."""
        return self.runner.padded_size(count) if self.runner is not None else count

    def batch_take(self, count: int) -> int:
        """How many of `count` waiting images a batch should run now: fewer than all only with buckets, when a
        smaller full bucket now and the rest later costs less than padding all of them (`batch_plan`)."""
        return self.runner.take(count) if self.runner is not None else count

    def expected_batch_s(self, count: int) -> float:
        """Seconds a batch of `count` images is expected to take, from the buckets' warm-up runs (0 without
        fixed shapes, or until warm-up has timed them)."""
        return self.runner.expected_s(count) if self.runner is not None else 0.0

    def run_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Labels [N, H, W] uint8 for N letterboxed uint8 RGB images of one size. Thread-safe (ORT's run is)."""
        first = images[0]
        if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
            raise ValueError(f"images must be uint8 [H, W, 3], got {first.dtype} {first.shape}")
        if self.runner is not None:
            return self._checked(self.runner.run_images(images), (len(images), *first.shape))
        return self._run_dynamic(np.stack(images))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Labels [N, H, W] uint8 for a uint8 NHWC RGB batch."""
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"batch must be uint8 [N, H, W, 3], got {batch.dtype} {batch.shape}")
        if self.runner is not None:
            return self.run_images(list(batch))
        return self._run_dynamic(np.ascontiguousarray(batch))

    def _run_dynamic(self, batch: np.ndarray) -> np.ndarray:
        (labels,) = self.session.run([LABELS_OUTPUT], {INPUT_NAME: batch})
        return self._checked(labels, batch.shape)

    @staticmethod
    def _checked(labels: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        LabelsShapeError.check(labels.shape, input_shape)
        return labels

    def check_labels(self, each_run: Callable[[], AbstractContextManager[object]] = nullcontext,
                     max_batch_size: int = 1) -> None:
        """Run padded images before the server starts, so that a model that cannot serve is refused now: labels
        of the wrong shape (LabelsShapeError) and, when batches of 2 or more will run, a batch dimension that is
        declared dynamic but fails above 1 (BatchSizeError). One run: a batch of 2 when `max_batch_size` allows
        it, else of 1. Only without fixed shapes: their bucket sessions are built by warm-up, whose runs check
        each bucket (`BucketSession.warm`)."""
        if self.runner is not None:
            return
        pad = pad_canvas(self.input_size, self.input_size, self.metadata.pad_rgb)
        if max_batch_size < 2:
            with each_run():
                self.run(pad[None])
            return
        try:
            with each_run():
                self.run(fill_bucket([pad], 2, self.metadata.pad_rgb))
        except ContractError:
            raise
        except Exception as batched:  # onnxruntime's own error types; which one depends on the failing node
            # Batch 1 tells the two apart: failing too, it is the device (left to warm-up's retries); working,
            # the model cannot run batches, and every batch would fail and be re-run image by image.
            with each_run():
                self.run(pad[None])
            said = " ".join(str(batched).split())  # one `cannot start` line, whatever onnxruntime's wording
            raise BatchSizeError(
                f"model runs 1 image but fails a batch of 2: SEGMENT_MAX_BATCH_SIZE is {max_batch_size}, so its "
                "batch dimension must really be dynamic; re-export it with a dynamic batch, or serve it with "
                f"SEGMENT_MAX_BATCH_SIZE=1 (onnxruntime: {said})") from None

    def warm_up(self, batch_sizes: Sequence[int] = (1,),
                each_run: Callable[[], AbstractContextManager[object]] = nullcontext,
                on_each_thread: OnEachThread | None = None) -> float:
        """Run the model on the inference size so the first request pays no allocation/tuning; seconds.

        With fixed shapes every bucket is built and warmed (`batch_sizes` is then ignored), then run once on each
        of the threads that will run batches, given as `on_each_thread` (`FixedShapeRunner.warm_up`); without, on
        a GPU, the one session runs the first of `batch_sizes` once on each of them. `each_run`
        is entered around each model run (each bucket's runs), not around the whole: what tells a hung run from
        a long warm-up.
        """
        start = time.perf_counter()
        size = self.input_size
        if self.runner is not None:
            self.runner.warm_up(each_run, on_each_thread)
            batch_sizes = self.runner.sizes
        else:
            pad = pad_canvas(size, size, self.metadata.pad_rgb)
            for n in batch_sizes:
                with each_run():
                    self.run(fill_bucket([pad], n, self.metadata.pad_rgb))
            if self.on_gpu and on_each_thread is not None:
                # The CUDA provider makes a thread's cuDNN/cuBLAS handles on its first run of a session: once on
                # each inference thread now, or each thread's first batch after readiness pays for them.
                with each_run():
                    on_each_thread(lambda: self.run(fill_bucket([pad], batch_sizes[0], self.metadata.pad_rgb)))
        elapsed = time.perf_counter() - start
        log.info("warm-up on %s at %dx%d took %.2fs", list(batch_sizes), size, size, elapsed)
        return elapsed


def uses_fixed_shapes(mode: str, provider: str) -> bool:
    """Whether an engine on `provider` pads to buckets: 'auto' means on GPU providers only (measured: on CPU a
    changing batch size costs nothing, and padding would cost compute)."""
    return mode == "on" or (mode == "auto" and provider in GPU_PROVIDERS)


def load_engine(options: EngineOptions) -> Engine:
    """Create the ORT session(s), check the contract and the provider actually in use."""
    given = Path(options.model_path)
    requested = resolve_providers(options.providers)
    # The first provider listed is the one that runs the model ('cpu,cuda' runs on the CPU).
    path = resolve_model_path(given, options.precision, cuda_active=requested[:1] == [CUDA])
    if path.is_dir():
        raise EngineError(f"model path {path} is a directory; give the .onnx file in it", "model_path")
    if not path.is_file():
        raise EngineError(f"model file {path} not found; give a .onnx file exported with `segment-export export`",
                          "model_path")
    threads = options.threads_for(on_gpu=requested[0] in GPU_PROVIDERS)
    identity = ModelFileIdentity.of(path)  # every later opening checks it is still this file (model_file.py)
    session = _open_session(path, requested, threads, options)
    metadata = validate_contract(session)
    active = session.get_providers()[0]
    if requested and active != requested[0]:
        # The known trap: CUDA requested, the library or driver missing, ORT quietly runs on CPU.
        log.warning("requested %s but onnxruntime is running %s (silent fallback)", requested[0], active)
        fitting_threads = options.threads_for(on_gpu=active in GPU_PROVIDERS)
        # 'auto' picked the fp16 sibling for CUDA; off CUDA fp16 runs far slower than fp32, so take what 'auto'
        # means on the provider really in use (an explicit precision resolves the same either way).
        fitting_path = resolve_model_path(given, options.precision, cuda_active=active == CUDA)
        if fitting_path != path and fitting_path.is_file():
            log.warning("precision auto: loading %s instead of %s, as the provider in use is %s",
                        fitting_path, path, active)
        else:
            fitting_path = path
        if (fitting_threads, fitting_path) != (threads, path):  # one remake for both
            threads, path = fitting_threads, fitting_path
            identity = ModelFileIdentity.of(path)
            session = _open_session(path, requested, threads, options)
            metadata = validate_contract(session)
    if path != given:  # a precision variant picked beside the file given: the same model, or refused
        check_variant(given, path, metadata)
    if options.require_gpu and active != CUDA:
        raise EngineError(f"a GPU is required but the provider in use is {active} "
                          f"(requested {requested}, available {ort.get_available_providers()})", "require_gpu")
    concurrent = options.concurrent_batches or (2 if active in GPU_PROVIDERS else 1)
    sha256 = file_sha256(path)
    identity.check(path, "its sha256")
    runner = None
    if uses_fixed_shapes(options.fixed_shapes, active):
        runner = _fixed_shape_runner(options, path, identity, requested, session, metadata, active, concurrent,
                                     threads)
    elif options.io_binding != "off":
        raise EngineError(f"io_binding '{options.io_binding}' runs fixed-shape buckets; fixed_shapes is "
                          f"'{options.fixed_shapes}' on {active} (set it to 'on')", "io_binding")
    engine = Engine(
        session=session, metadata=metadata, model_path=path, provider=active, requested_providers=requested,
        intra_op_threads=threads, concurrent_batches=concurrent, device_id=options.device_id,
        has_confidence=CONFIDENCE_OUTPUT in {o.name for o in session.get_outputs()}, runner=runner,
        sha256=sha256,
    )
    log.info("loaded %s (%s, %s, %d classes, input %d) on %s with %d intra-op threads%s", path, metadata.arch,
             metadata.precision, metadata.num_classes, metadata.input_size, active, threads,
             f", fixed-shape buckets {runner.sizes}" if runner else "")
    return engine


def _open_session(path: Path, requested: list[str], threads: int, options: EngineOptions) -> ort.InferenceSession:
    """`create_session`, with ORT's own load errors (unreadable or invalid graphs) as a ContractError, and a
    CUDA provider that cannot be created with the options given as an EngineError naming `cuda_options`."""
    try:
        return create_session(path, requested, threads, options.cuda_options)
    except RuntimeError as exc:
        # A provider's creation throws a plain RuntimeError (a mistyped or invalid option, a device_id out of range);
        # an unreadable or invalid graph raises onnxruntime's own status exceptions, none of them a RuntimeError.
        if CUDA not in requested:
            raise ContractError(f"onnxruntime cannot load {path}: {exc}") from exc
        raise EngineError(f"onnxruntime cannot load {path} on {CUDA} with the CUDA options given "
                          f"{dict(options.cuda_options)} (an unknown or invalid option fails here): {exc}",
                          "cuda_options") from exc
    except Exception as exc:  # ORT raises its own exception types for unreadable/invalid graphs
        raise ContractError(f"onnxruntime cannot load {path}: {exc}") from exc


def _fixed_shape_runner(options: EngineOptions, path: Path, identity: ModelFileIdentity, requested: list[str],
                        session: ort.InferenceSession, metadata: ModelMetadata, active: str, concurrent: int,
                        threads: int) -> FixedShapeRunner:
    """Buckets whose sessions are built with their one shape fixed, bound to buffers if `io_binding` says so."""
    if options.io_binding == "cuda_graph" and active != CUDA:
        raise EngineError(f"io_binding 'cuda_graph' needs the CUDA provider; the provider in use is {active}",
                          "io_binding")
    size = metadata.input_size
    input_shape = session.get_inputs()[0].shape
    cuda_options = bucket_cuda_options(options.cuda_options, cuda_graph=options.io_binding == "cuda_graph")

    def make_bucket_session(batch: int) -> ort.InferenceSession:
        dims = fixed_dims(input_shape, batch, size, size)
        identity.check(path, f"the session of bucket {batch}")  # built in warm-up, long after the first opening
        return create_session(path, requested, threads, cuda_options, fixed_dims=dims)

    binding = None
    if options.io_binding != "off":
        device = "cuda" if active in GPU_PROVIDERS else "cpu"
        binding = Binding(options.io_binding, device, instances=concurrent)
    runner = FixedShapeRunner(normalise_buckets(options.batch_buckets, options.max_batch_size), (size, size),
                              metadata.pad_rgb, make_bucket_session, on_gpu=active in GPU_PROVIDERS,
                              binding=binding, device_id=options.device_id, concurrent_batches=concurrent)
    runner.adopt_dynamic(session)
    return runner
