"""Service settings: one pydantic-settings object, read from `SEGMENT_*` environment variables."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MB = 1024 * 1024


def default_model_path() -> Path:
    """The embedded model: `<repo>/models/default.onnx` next to the package, else `./models/default.onnx`."""
    beside_package = Path(__file__).resolve().parent.parent / "models" / "default.onnx"
    if beside_package.exists():
        return beside_package
    return Path("models") / "default.onnx"


def available_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup v2 CPU quota if one is set.

    onnxruntime's own default counts the host's cores, which oversubscribes a CPU-limited container.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def _parse_count(value: object) -> object:
    """Accept `40e6`, `20MB`, `256MiB` for sizes and counts, not only plain integers."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower().replace("_", "")
    number = text.rstrip("kmgib")
    unit = text[len(number):]
    if unit not in _UNITS:
        return value  # let pydantic report it
    try:
        amount = float(number) * _UNITS[unit]
    except ValueError:
        return value
    return int(amount) if amount.is_integer() else value


def _split_csv(value: object) -> object:
    """Accept `a,b,c` (the deployment files' form) as well as a list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of `segment-serve`. Environment: `SEGMENT_<NAME>`, e.g. `SEGMENT_MAX_BATCH_SIZE=16`."""

    # env_ignore_empty: `SEGMENT_X=` (as compose writes `${SEGMENT_X:-}`) means "use the default".
    model_config = SettingsConfigDict(env_prefix="SEGMENT_", protected_namespaces=(), extra="ignore",
                                      env_ignore_empty=True)

    model_path: Path = Field(default_factory=default_model_path, description="ONNX file meeting the contract")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    providers: str = Field("auto", description="'auto' (CUDA then CPU if available) or a comma list, "
                                               "e.g. 'cuda,cpu' or 'CPUExecutionProvider'")
    require_gpu: bool = Field(False, description="fail startup unless CUDA is the provider actually in use")
    intra_op_threads: int = Field(default_factory=available_cpus, ge=1)
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    max_upload_bytes: int = Field(20 * MB, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    decode_memory_bytes: int = Field(1024 * MB, ge=1,
                                     description="memory that image decodes in flight may hold together")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                     description="comma list; empty turns auth off")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma list, or *")
    result_ttl_s: float = Field(300.0, ge=0)
    result_cache_bytes: int = Field(256 * MB, ge=0)
    log_level: str = "info"
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="'auto' prefers a sibling *.fp16.onnx when CUDA is active; others pick that variant")
    worker_threads: int = Field(default_factory=lambda: max(2, available_cpus()), ge=1,
                                description="thread pool for decode/letterbox/encode, off the event loop")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("max_upload_bytes", "max_pixels", "result_cache_bytes", "decode_memory_bytes",
                     mode="before")
    @classmethod
    def _count(cls, value: object) -> object:
        return _parse_count(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        return value.lower()
