"""The GPU the engine runs on, read through NVML (nvidia-ml-py, installed with the GPU image; optional).

Every reading returns None where NVML is missing (CPU hosts, no driver) or refuses, so callers never fail on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuReading:
    """One sample of the device: memory in bytes, utilisation as a 0..1 fraction of the last sample period and
    power in watts (each None where the device does not report it: MIG instances and some virtual GPUs report
    memory but no utilisation)."""

    memory_used: int
    memory_total: int
    utilization: float | None
    power_watts: float | None


def _nvml() -> Any | None:
    try:
        import pynvml  # optional: nvidia-ml-py

        pynvml.nvmlInit()  # reference-counted by NVML: repeated calls are cheap and safe
        return pynvml
    except Exception:  # no module, no library, no driver
        return None


def _visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES's entries (indices or UUIDs) as CUDA reads them, up to the first invalid one (so `-1`
    hides every device); None where it is not set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def device_handle(device_id: int = 0) -> tuple[Any, Any] | None:
    """(pynvml, handle) for CUDA device `device_id` as this process sees it: CUDA_VISIBLE_DEVICES renumbers
    devices (by index or by UUID), NVML does not."""
    nvml = _nvml()
    if nvml is None:
        return None
    visible = _visible_devices()
    if visible is None:
        physical = str(device_id)
    elif device_id < len(visible):
        physical = visible[device_id]
    else:  # hidden (`""`, `-1`) or past the visible list: no such device for this process, not physical device N
        return None
    try:
        if physical.isdigit():
            return nvml, nvml.nvmlDeviceGetHandleByIndex(int(physical))
        return nvml, nvml.nvmlDeviceGetHandleByUUID(physical)
    except Exception:  # a MIG or unknown identifier: unknown
        return None


def visible_device_count() -> int | None:
    """How many CUDA devices this process may use: CUDA_VISIBLE_DEVICES's entries when it is set (CUDA stops at
    the first invalid one, so `-1` hides them all), else NVML's count; None where neither can say."""
    visible = _visible_devices()
    if visible is not None:
        return len(visible)
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:  # NVML up but refusing: unknown
        return None


def read(device: tuple[Any, Any]) -> GpuReading | None:
    """A reading of the device from `device_handle`; None if NVML refuses its memory."""
    nvml, handle = device
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:
        return None
    # Each on its own: a device that refuses one (NVML_ERROR_NOT_SUPPORTED) must not hide the others.
    try:
        utilization: float | None = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
    except Exception:  # MIG instances, some virtual GPUs
        utilization = None
    try:
        power: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
    except Exception:  # not every board reports power
        power = None
    return GpuReading(int(memory.used), int(memory.total), utilization, power)
