"""GPU metrics read at scrape time (Triton's nv_gpu_*): what a GPU deployment alerts on besides the service's own.

Registered only when the engine runs on a GPU and NVML answers (`service.core.nvml`); a CPU server exports none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .core import nvml
from .metrics import Metrics


class GpuCollector(Collector):
    """segment_gpu_* gauges for one device, sampled when Prometheus scrapes."""

    def __init__(self, device: tuple[Any, Any], gpu: str) -> None:
        self._device = device
        self._gpu = gpu

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = nvml.read(self._device)
        if reading is None:
            return
        values = [("segment_gpu_memory_used_bytes", "GPU memory in use (all processes)", reading.memory_used),
                  ("segment_gpu_memory_total_bytes", "GPU memory in all", reading.memory_total),
                  ("segment_gpu_utilization_ratio",
                   "Fraction of the last sample period the GPU ran a kernel (NVML)", reading.utilization)]
        if reading.power_watts is not None:
            values.append(("segment_gpu_power_watts", "GPU board power draw", reading.power_watts))
        for name, documentation, value in values:
            family = GaugeMetricFamily(name, documentation, labels=["gpu"])
            family.add_metric([self._gpu], value)
            yield family


def register_gpu_metrics(registry: CollectorRegistry | Metrics, device_id: int = 0) -> bool:
    """Add the GPU gauges for CUDA device `device_id` to `registry` (the app's `Metrics`, so that several
    workers' scrapes include them too); False where NVML cannot see it."""
    device = nvml.device_handle(device_id)
    if device is None or nvml.read(device) is None:
        return False
    registry.register(GpuCollector(device, str(device_id)))
    return True
