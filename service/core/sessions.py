"""onnxruntime sessions for the engine: provider and session options, and the memory a session holds.

Torch-free and HTTP-free: the service, the batch CLI's local mode, evaluation and the benchmarks all build their
sessions here; the fixed-shape buckets' sessions are `service.core.fixed_shapes`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnxruntime as ort

from . import nvml

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)


def provider_options(name: str, cuda_options: Mapping[str, str] | None = None) -> dict[str, str]:
    """Options for one execution provider; `cuda_options` (a setting) is passed through last, so it wins."""
    if name != CUDA:
        return {}
    # Measured on an H100 (deeplabv3_resnet101, 513x513, fp16): NHWC kernels give 1.4x at the best batch and
    # 1.8x at batch 1 over NCHW. HEURISTIC: EXHAUSTIVE was slower (217 vs 250 img/s at batch 16) and DEFAULT
    # falls back to very slow kernels.
    return {"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1", **(cuda_options or {})}


def bucket_cuda_options(cuda_options: Mapping[str, str] | None = None, cuda_graph: bool = False) -> dict[str, str]:
    """The CUDA options of a fixed-shape bucket's sessions: `cuda_options` (a setting) over the bucket defaults.

    A bucket's session asks its memory arena for the same blocks on every run, so the arena grows by exactly
    what is asked (`kSameAsRequested`): onnxruntime's default rounds each growth up to a power of two, and the GPU
    runs show it, every fp16 bucket holding 0.5, 1, 2 or 3 GiB of arena plus about 150 MiB. The arena grows during
    warm-up (and once more the first time two batches of one bucket run at once); steady runs reuse its blocks,
    so exact growth should cost no speed (the next GPU run checks). On the CPU arena, the same allocator, it
    reserved 34 % less for deeplabv3_resnet101 buckets 1-8 (docs/BENCHMARKS.md, `bench.arena_bench`).
    """
    options = {"arena_extend_strategy": "kSameAsRequested", **(cuda_options or {})}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def session_options(intra_op_threads: int, fixed_dims: Mapping[str, int] | None = None) -> ort.SessionOptions:
    """The session options every engine session uses; `fixed_dims` pins the model's named dimensions."""
    options = ort.SessionOptions()
    # A bucket's session only ever sees one shape, so tell onnxruntime: the shape computations (Shape, Gather,
    # Concat, Reshape feeding the Resize sizes) then fold into constants at load. That leaves no node for the
    # CUDA provider to hand to the CPU (each such node is a device sync and copy) and makes the whole graph
    # capturable as a CUDA graph; onnxruntime also refuses any other input shape itself.
    for name, value in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, value)
    # Explicit: ORT's default reads the host's cores, not the container's share.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Spinning worker threads would keep the cores busy between ops and starve the event loop (and the codec
    # pool) on small machines; blocking costs microseconds per op.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(path: Path, providers: Sequence[str], intra_op_threads: int,
                   cuda_options: Mapping[str, str] | None = None,
                   fixed_dims: Mapping[str, int] | None = None) -> ort.InferenceSession:
    """An InferenceSession for `path` on `providers` (in priority order) with the engine's options.

    onnxruntime's Python fallback is off: by default, when creating a provider throws (a mistyped or invalid
    CUDA option, a `device_id` out of range, a CUDA call failing at provider creation) the session is quietly made
    again on the CPU alone, without the options, and a run failing inside a provider moves the session to the CPU
    for good; only a line printed to stdout tells. A provider that is missing altogether (no CUDA library) still
    leaves the session on the CPU without an error, which the engine checks (`session.get_providers()`).
    """
    return ort.InferenceSession(str(path), sess_options=session_options(intra_op_threads, fixed_dims),
                                providers=[(p, provider_options(p, cuda_options)) for p in providers],
                                enable_fallback=0)


def fixed_dims(input_shape: Sequence[object], batch: int, height: int, width: int) -> dict[str, int]:
    """The free-dimension overrides that pin an input of shape `input_shape` (as ORT reports it, e.g.
    ['batch', 'height', 'width', 3]) to [batch, height, width, 3]; empty when its dimensions are unnamed or one
    name would need two values."""
    dims: dict[str, int] = {}
    for name, value in zip(input_shape[:3], (batch, height, width), strict=False):
        if isinstance(name, str) and name and dims.setdefault(name, value) != value:
            return {}
    return dims


def memory_in_use(on_gpu: bool, device_id: int = 0) -> int | None:
    """Bytes in use now: CUDA device `device_id`'s (NVML, when nvidia-ml-py is installed) or this process's
    resident set.

    Read before and after a bucket's session is built and warmed, the difference is that bucket's cost.
    """
    if on_gpu:
        device = nvml.device_handle(device_id)
        reading = nvml.read(device) if device is not None else None
        return reading.memory_used if reading is not None else None
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):  # not Linux
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
