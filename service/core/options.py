"""How to load an engine, as plain data: the service fills it from its settings, offline tools from their flags.

The defaults shared by the service, the batch CLI's local mode, evaluate and the benchmarks live here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .cpus import available_cpus

# Images per model run: the service's `max_batch_size`, and the chunk size of offline runs.
DEFAULT_BATCH_SIZE = 8
# Pixels an upload may have (checked on the header, before decoding).
DEFAULT_MAX_PIXELS = 40_000_000
# The embedded demo model ships inside the package (package data), so every install finds it, editable or not.
EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.onnx"

Precision = Literal["auto", "fp32", "fp16", "int8"]
FixedShapes = Literal["auto", "on", "off"]
IoBinding = Literal["off", "on", "cuda_graph"]


@dataclass(frozen=True)
class EngineOptions:
    """Everything `load_engine` needs. Nothing is read from the environment: what is not given is the default.

    `providers`: 'auto' (CUDA, then CPU) or a comma list ('cuda,cpu', 'CPUExecutionProvider').
    `precision`: 'auto' prefers a sibling `*.fp16.onnx` when CUDA is active; others require that variant.
    `intra_op_threads`: 0 means the default: one on a GPU provider (the model runs on the device; every session
    would keep a pool of idle CPU threads), else the CPUs this process may use (`available_cpus`) shared among
    `processes`, the server processes on this host.
    `fixed_shapes`: pad batches to `batch_buckets`, one session per bucket ('auto': on GPU providers only).
    `batch_buckets`: empty means 1, 2, 4, ... up to `max_batch_size`.
    `cuda_options`: extra CUDA provider options over the defaults (`service.core.sessions`).
    `concurrent_batches`: batches in flight at once; None means 2 on GPU providers, 1 otherwise.
    `io_binding`: bucket sessions run on preallocated buffers ('on'), replayed as CUDA graphs ('cuda_graph',
    CUDA only), or plainly ('off'); see `service.core.bound`. Needs fixed shapes.
    """

    model_path: Path = EMBEDDED_MODEL
    providers: str = "auto"
    precision: Precision = "auto"
    intra_op_threads: int = 0
    processes: int = 1
    require_gpu: bool = False
    fixed_shapes: FixedShapes = "auto"
    max_batch_size: int = DEFAULT_BATCH_SIZE
    batch_buckets: Sequence[int] = ()
    cuda_options: Mapping[str, str] = field(default_factory=dict)
    concurrent_batches: int | None = None
    io_binding: IoBinding = "off"

    @property
    def device_id(self) -> int:
        """The CUDA device the engine runs on (the CUDA provider's `device_id` option; 0 by default)."""
        return int(self.cuda_options.get("device_id", 0))

    def threads_for(self, on_gpu: bool) -> int:
        """The intra-op threads of each session, on a GPU provider or not."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return 1 if on_gpu else max(1, available_cpus() // self.processes)
