"""Service settings: one pydantic-settings object, read from `SEGMENT_*` environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, DirectoryPath, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from uvicorn.config import LOG_LEVELS  # uvicorn's --log-level choices, the server this setting is passed to

from .core import nvml
from .core.buckets import normalise_buckets
from .core.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    EMBEDDED_MODEL,
    EngineOptions,
    FixedShapes,
    IoBinding,
    Precision,
    available_cpus,
)
from .settings_values import api_key_list, count, header_safe_keys, split_csv

MB = 1024 * 1024
SECRET_SETTINGS = frozenset({"api_keys", "bulk_api_keys"})  # never repeated in an error message: it goes to the logs


def default_model_path() -> Path:
    """The embedded demo model, wherever the package is installed."""
    return EMBEDDED_MODEL


class Settings(BaseSettings):
    """Every knob of `segment-serve`. Environment: `SEGMENT_<NAME>`, e.g. `SEGMENT_MAX_BATCH_SIZE=16`."""

    # env_ignore_empty: `SEGMENT_X=` (as compose writes `${SEGMENT_X:-}`) means "use the default". allow_inf_nan:
    # no float setting means anything at inf or nan (an infinite probe interval failed every /segment with a 500).
    model_config = SettingsConfigDict(env_prefix="SEGMENT_", protected_namespaces=(), extra="ignore",
                                      env_ignore_empty=True, allow_inf_nan=False)

    model_path: Path = Field(default_factory=default_model_path, description="ONNX file meeting the contract")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    providers: str = Field("auto", description="'auto' (CUDA then CPU if available) or a comma list, "
                                               "e.g. 'cuda,cpu' or 'CPUExecutionProvider'")
    require_gpu: bool = Field(False, description="fail startup unless CUDA is the provider actually in use")
    intra_op_threads: int | None = Field(
        None, ge=1, description="onnxruntime's threads per session; unset: 1 on a GPU (the model runs on the "
                                "device), else the CPUs this process may use, shared among the workers")
    max_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(64, ge=1)
    bulk_queue_share: float = Field(
        0.5, gt=0.0, le=1.0,
        description="the share of the inference queue that `priority=bulk` requests may fill; the rest (and as "
                    "many places among the requests in progress) is kept for interactive ones, which are also run "
                    "first. 1: none kept")
    max_tiles: int = Field(
        16, ge=1, description="the most model inputs one request may run in: an image segmented at a `resolution` "
                              "above the model's input size runs in overlapping tiles of it; 422 `too_many_tiles` "
                              "beyond (the answer names the highest resolution that fits)")
    request_timeout_s: float = Field(30.0, gt=0)
    # ByteSize: `20MiB`, `20MB`, `1.5GB` or plain bytes.
    max_upload_bytes: ByteSize = Field(ByteSize(20 * MB), ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="accepts 40e6")
    # At least 64 KiB: less refuses even thumbnails (3 bytes a pixel at best), and warm-up's own small JPEG,
    # which must decode for the server to become ready, would not fit.
    decode_memory_bytes: ByteSize = Field(ByteSize(1024 * MB), ge=64 * 1024,
                                          description="memory that image decodes in flight may hold together")
    # What a request keeps from its decode until its answer is sent (an overlay's full-size image: 36 MB for 12 MP);
    # at least 64 KiB for the same reason as the decode budget.
    request_memory_bytes: ByteSize = Field(
        ByteSize(1024 * MB), ge=64 * 1024,
        description="memory that the requests in progress of one server process may hold from their decode until "
                    "their answer is sent (uploads, decoded images kept for overlays, model inputs, answers); "
                    "503 overloaded beyond, before decoding; 413 for one request that needs more than all of it")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                     description="comma list; empty turns auth off")
    bulk_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma list of API keys whose /segment requests are all bulk, whatever "
                                          "their `priority` (an offline job's); accepted as SEGMENT_API_KEYS are")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma list, or *")
    result_ttl_s: float = Field(300.0, ge=0)
    result_cache_bytes: ByteSize = Field(ByteSize(256 * MB), ge=0)
    results_dir: DirectoryPath | None = Field(None, description="keep results as files here, shared by the worker "
                                     "processes (the supervisor sets it when SEGMENT_WORKERS > 1)")
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="'text': lines for a terminal; 'json': one JSON object per line (time, level, logger, "
                            "message, pid, a worker's slot, an exception's traceback; an access line's client, "
                            "method, path, status and request id), for a log collector")
    precision: Precision = Field(
        "auto", description="'auto' prefers a sibling *.fp16.onnx when CUDA is active; others pick that variant")
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="server processes on one port, each with its own model sessions, batcher and result "
                            "cache; metrics summed over them. 'auto': one per CUDA device when the CUDA provider "
                            "is available (as Triton puts an instance on every GPU), else one")
    cuda_devices: str = Field(
        "auto", description="CUDA devices the workers spread over, round robin: a comma list of device numbers "
                            "as this process sees them, or 'auto' for every visible one; a 'device_id' in "
                            "cuda_options names the one device instead")
    worker_slot: int | None = Field(
        None, ge=0, description="set by the supervisor in each worker: its slot, which picks its CUDA device "
                                "(0..workers-1 where slots pick devices); a replacement takes the slot of the "
                                "worker it replaces")
    # uvicorn's default of 5 s is known to kill healthy workers whose interpreter is busy (uvicorn issue #2506).
    worker_healthcheck_s: int = Field(60, ge=1, description="a worker that does not answer the supervisor's "
                                        "ping this long is killed and replaced")
    # Several workers on one host each get their share of the CPUs, as onnxruntime's intra-op threads do: every
    # worker sizing its pool to the whole host would run workers x CPUs codec threads, all contending.
    worker_threads: int | None = Field(
        None, ge=1, description="thread pool for decode/letterbox/encode, off the event loop; unset: the CPUs "
                                "this process may use, shared among the workers (at least 2)")
    # OpenCV splits a resize or a histogram over its own threads (one per CPU by default); the worker threads
    # already run requests side by side, and the split costs more CPU than it saves (a 1024x768 JPEG's decode
    # to render, 2 CPUs: labels 4.8 -> 4.4 CPU-ms, polygons 9.1 -> 8.1, wall time no longer, the same answers;
    # `python -m bench.opencv_threads_bench`, docs/BENCHMARKS.md).
    opencv_threads: int = Field(1, ge=1, description="OpenCV's own threads per call (process-wide)")
    fixed_shapes: FixedShapes = Field(
        "auto", description="pad batches to bucket sizes, one session per bucket, so no session ever sees a "
                            "second input shape (cuDNN re-plans on every change); 'auto': on for GPU providers")
    batch_buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list, validate_default=True,
        description="comma list of bucket batch sizes; empty: 1, 2, 4, ... up to max_batch_size (which is always "
                    "a bucket)")
    concurrent_batches: int | None = Field(
        None, ge=1, description="batches in flight at once (Triton's instance count); unset: 2 on GPU, 1 on CPU")
    fill_while_busy: bool = Field(
        False, description="while other batches run, keep filling the next one until they are nearly done, from "
                           "the buckets' warm-up times: larger batches for more latency; pays where batches in "
                           "flight do not overlap on the device; needs fixed shapes")
    io_binding: IoBinding = Field(
        "off", description="bucket sessions on preallocated buffers ('on'), replayed as CUDA graphs "
                           "('cuda_graph', CUDA only; one session per bucket and concurrent batch), or plain "
                           "run ('off'); needs fixed shapes")
    cuda_options: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="extra CUDA provider options, 'key=value,key=value' "
                                          "(they override the defaults prefer_nhwc=1, "
                                          "cudnn_conv_algo_search=HEURISTIC)")
    # A failing device (service/inference_guard.py): unready, then unhealthy, then ready again once runs work.
    inference_failures_to_unready: int = Field(
        3, ge=1, description="failed probes in a row (the known-good image failing after a failed batch) before "
                             "/readyz and /segment answer 503 inference_unavailable")
    inference_probe_s: float = Field(2.0, gt=0, description="while runs fail, how often the known-good image is "
                                                           "tried; its first success makes the service ready")
    inference_unhealthy_after_s: float = Field(
        60.0, gt=0, description="runs failing this long, or one run in flight this long (a hung device), make "
                                "/healthz 503 too, so a liveness probe restarts the process (a device context that "
                                "failed may not recover in it); keep it above the longest model run, startup's "
                                "warm-up runs included")
    exit_when_unhealthy: bool = Field(
        True, description="once unhealthy (see inference_unhealthy_after_s), stop: SIGTERM to itself, exit status 4 "
                          "if that does not finish in time; restart policies and the worker supervisor then start "
                          "a fresh process")
    # Connection-level limits (service/server.py, service/connection.py): what one client may hold.
    max_header_bytes: ByteSize = Field(ByteSize(16 * 1024), ge=1024,
                                       description="request line + headers; 431/414 beyond")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head must arrive within this; 408")
    body_timeout_s: float = Field(10.0, gt=0, description="body deadline, extended by body_min_rate; 408")
    body_min_rate: ByteSize = Field(ByteSize(32 * 1024), ge=1,
                                    description="bytes/s an upload earns beyond body_timeout_s")
    send_timeout_s: float = Field(30.0, gt=0, description="unread response bytes must leave within this, extended "
                                  "by send_min_rate; else the connection is aborted")
    send_min_rate: ByteSize = Field(ByteSize(32 * 1024), ge=1,
                                    description="bytes/s a reader earns beyond send_timeout_s")
    upload_buffer_bytes: ByteSize = Field(ByteSize(512 * MB), ge=1,
                                          description="bytes received of bodies still arriving; 503 beyond (413 for "
                                                      "one upload declared larger than all of it)")
    max_result_renders: int = Field(1, ge=1, description="concurrent /results renders; 503 beyond")
    # The dense CRF holds the interpreter lock for its whole run (seconds at 513x513), so it runs in processes of its
    # own; each is a single-threaded CPU job, beside onnxruntime's threads on the same CPUs.
    crf_processes: int | None = Field(
        None, ge=1, description="processes that run the dense CRF of `crf=true` requests (at nice +10), started on "
                                "the first such request; as many more requests may wait for one, 503 overloaded "
                                "beyond; unset: half this process's share of the CPUs, at least 1")
    shutdown_timeout_s: float = Field(25.0, ge=1, le=3600,
                                      description="graceful-shutdown bound (below compose's 30 s); whole seconds "
                                                  "for uvicorn, rounded up")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("api_keys", "bulk_api_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object, info: ValidationInfo) -> object:
        return api_key_list(value, bulk=info.field_name == "bulk_api_keys")

    @field_validator("api_keys", "bulk_api_keys")
    @classmethod
    def _header_safe(cls, value: list[str]) -> list[str]:
        return header_safe_keys(value)

    @field_validator("batch_buckets", mode="before")
    @classmethod
    def _bucket_list(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("cuda_options", mode="before")
    @classmethod
    def _key_values(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = [item.partition("=") for item in split_csv(value)]  # type: ignore[union-attr]
        bad = [key for key, sep, _ in pairs if not sep or not key.strip()]
        if bad:
            raise ValueError(f"expected key=value pairs, got {bad}")
        options = {key.strip(): val.strip() for key, _, val in pairs}
        if not options.get("device_id", "0").isdigit():  # it picks the workers' device: a number
            raise ValueError(f"device_id must be a device number, got {options['device_id']!r}")
        return options

    @field_validator("cuda_devices")
    @classmethod
    def _device_list(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "auto":
            return value
        devices = [d.strip() for d in value.split(",")]
        if not all(d.isdigit() for d in devices) or len(set(devices)) != len(devices):
            raise ValueError(f"expected 'auto' or distinct device numbers such as '0,1', got {value!r}")
        return ",".join(devices)

    @field_validator("batch_buckets")
    @classmethod
    def _buckets_fit(cls, value: list[int], info: ValidationInfo) -> list[int]:
        # Resolved here, default included (validate_default), not by assigning the field in a model validator:
        # that would count it among the fields the user set (`model_fields_set`), which app.py warns about.
        if "max_batch_size" not in info.data:  # itself invalid, and reported as such
            return value
        return normalise_buckets(value, info.data["max_batch_size"])

    @field_validator("max_pixels", mode="before")
    @classmethod
    def _pixels(cls, value: object) -> object:
        return count(value)

    @field_validator("host")
    @classmethod
    def _resolvable(cls, value: str) -> str:
        # Here, before the model loads: uvicorn resolves it only once the app has started, with a traceback.
        if value:  # empty: every interface, as asyncio reads it
            try:
                socket.getaddrinfo(value, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:  # UnicodeError: no valid host name (`a..b`, a label too long)
                raise ValueError(f"not an address or host name this machine can resolve: {exc}") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in LOG_LEVELS:  # else uvicorn fails on it later, with a traceback
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return value

    def worker_total(self) -> int:
        """How many workers there are, as a worker sees it: the supervisor passes its resolved count on, and a
        single process left at 'auto' is one."""
        return self.workers if self.workers != "auto" else 1

    def codec_threads(self) -> int:
        """The codec thread pool's size: `worker_threads`, or this worker's share of the CPUs (at least 2, so one
        slow decode never holds up every other request)."""
        return self.worker_threads or max(2, available_cpus() // self.worker_total())

    def crf_pool_processes(self) -> int:
        """The CRF pool's processes: `crf_processes`, or half this worker's share of the CPUs (at least 1)."""
        return self.crf_processes or max(1, available_cpus() // self.worker_total() // 2)

    def cuda_device_list(self) -> list[int]:
        """The CUDA devices the workers spread over: the `device_id` of `cuda_options`, the `cuda_devices` list,
        or every device this process can see (device 0 where nothing says how many there are)."""
        if "device_id" in self.cuda_options:
            return [int(self.cuda_options["device_id"])]
        if self.cuda_devices != "auto":
            return [int(d) for d in self.cuda_devices.split(",")]
        return list(range(nvml.visible_device_count() or 1))

    def cuda_device(self) -> int:
        """This process's CUDA device: its worker slot's, round robin over `cuda_device_list`."""
        devices = self.cuda_device_list()
        return devices[(self.worker_slot or 0) % len(devices)]

    def cuda_devices_in_use(self, workers: int) -> list[int]:
        """The devices `workers` workers run on (slots 0..workers-1)."""
        devices = self.cuda_device_list()
        return sorted({devices[slot % len(devices)] for slot in range(workers)})

    @property
    def accepted_api_keys(self) -> list[str]:
        """Every key a request may present: `api_keys` and `bulk_api_keys`; none, and authentication is off."""
        return list(dict.fromkeys([*self.api_keys, *self.bulk_api_keys]))

    def engine_options(self) -> EngineOptions:
        """What the core's `load_engine` needs, from these settings."""
        return EngineOptions(
            model_path=self.model_path, providers=self.providers, precision=self.precision,
            intra_op_threads=self.intra_op_threads or 0, processes=self.worker_total(), require_gpu=self.require_gpu,
            fixed_shapes=self.fixed_shapes,
            max_batch_size=self.max_batch_size, batch_buckets=tuple(self.batch_buckets),
            cuda_options={**self.cuda_options, "device_id": str(self.cuda_device())},
            concurrent_batches=self.concurrent_batches, io_binding=self.io_binding,
        )
