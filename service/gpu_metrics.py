"""GPU metrics read at scrape time (Triton's nv_gpu_*): what a GPU deployment alerts on besides the service's own.

Registered only when the engine runs on a GPU and NVML answers (`service.core.nvml`); a CPU server exports none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .core import nvml
from .metrics import Metrics


class GpuCollector(Collector):
    """segment_gpu_* gauges for the devices, labelled by device number, sampled when Prometheus scrapes."""

    def __init__(self, devices: dict[str, tuple[Any, Any]]) -> None:
        self._devices = devices  # {label: NVML device}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, documentation, labels=["gpu"]) for name, documentation in (
            ("segment_gpu_memory_used_bytes", "GPU memory in use (all processes)"),
            ("segment_gpu_memory_total_bytes", "GPU memory in all"),
            ("segment_gpu_utilization_ratio", "Fraction of the last sample period the GPU ran a kernel (NVML)"),
            ("segment_gpu_power_watts", "GPU board power draw"))}
        for gpu, device in self._devices.items():
            reading = nvml.read(device)
            if reading is None:
                continue
            for name, value in (("segment_gpu_memory_used_bytes", reading.memory_used),
                                ("segment_gpu_memory_total_bytes", reading.memory_total),
                                ("segment_gpu_utilization_ratio", reading.utilization),
                                ("segment_gpu_power_watts", reading.power_watts)):
                if value is not None:  # not every device reports utilisation or power
                    families[name].add_metric([gpu], value)
        yield from (family for family in families.values() if family.samples)


def register_gpu_metrics(registry: CollectorRegistry | Metrics, device_ids: Sequence[int] = (0,)) -> bool:
    """Add the GPU gauges for CUDA devices `device_ids` to `registry` (the app's `Metrics`, so that several
    workers' scrapes include them too); False where NVML cannot see one of them (those are left out)."""
    devices = {str(i): nvml.device_handle(i) for i in device_ids}
    readable = {gpu: device for gpu, device in devices.items() if device is not None and nvml.read(device)}
    if readable:
        registry.register(GpuCollector(readable))
    return len(readable) == len(devices)
