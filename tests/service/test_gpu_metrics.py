"""GPU metrics from NVML: the device the engine uses (CUDA_VISIBLE_DEVICES renumbering, by index or UUID), read
at scrape time, absent on a CPU server; NVML failures never break a scrape. NVML itself needs a GPU, so these
tests give the collector a stand-in `pynvml` module with NVML's interface; on a GPU host the benchmark
records the real samples (`bench/gpu_bench.py`, `gpu_metrics`)."""

from __future__ import annotations

import sys

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.core import nvml
from service.core.options import EngineOptions
from service.core.sessions import memory_in_use
from service.gpu_metrics import register_gpu_metrics
from service.settings import default_model_path
from tests.service.nvml_helpers import fake_pynvml


def samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("segment_gpu_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_the_engines_device_is_read_at_scrape_time(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, [1])  # the process's device 1 is physical device 3
    assert ("index", 3) in module.lookups
    assert samples(registry) == {
        'segment_gpu_memory_used_bytes{gpu="1"}': 3_000.0, 'segment_gpu_memory_total_bytes{gpu="1"}': 80_000.0,
        'segment_gpu_utilization_ratio{gpu="1"}': 0.9, 'segment_gpu_power_watts{gpu="1"}': 650.0}
    assert memory_in_use(on_gpu=True, device_id=1) == 3_000  # bucket memory reads the engine's device too
    assert EngineOptions(cuda_options={"device_id": "1"}).device_id == 1 and EngineOptions().device_id == 0
    module.broken = True  # a lost GPU: the scrape still answers, without the GPU gauges
    assert samples(registry) == {}
    assert memory_in_use(on_gpu=True) is None


def test_devices_named_by_uuid_and_boards_without_power(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml(power=False)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b,GPU-a")
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, [1])
    assert module.lookups == [("uuid", "GPU-a")]
    assert samples(registry) == {'segment_gpu_memory_used_bytes{gpu="1"}': 1_000.0,
                                 'segment_gpu_memory_total_bytes{gpu="1"}': 8_000.0,
                                 'segment_gpu_utilization_ratio{gpu="1"}': 0.25}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert memory_in_use(on_gpu=True) == 1_000  # bucket memory comes from the same device lookup
    assert register_gpu_metrics(CollectorRegistry(), [7]) is False  # no such device: no gauges


def test_a_device_without_utilisation_still_reports_its_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MIG instance (and some virtual GPUs) report memory but refuse utilisation: its memory gauges, and the
    per-bucket memory in /readyz, must not be lost with it."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(utilization=False))
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, [0])
    assert samples(registry) == {'segment_gpu_memory_used_bytes{gpu="0"}': 1_000.0,
                                 'segment_gpu_memory_total_bytes{gpu="0"}': 8_000.0,
                                 'segment_gpu_power_watts{gpu="0"}': 70.5}
    assert memory_in_use(on_gpu=True) == 1_000


def test_no_nvml_means_no_gpu_gauges(monkeypatch: pytest.MonkeyPatch, serve) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as on a host without nvidia-ml-py
    assert nvml.device_handle() is None and memory_in_use(on_gpu=True) is None
    assert register_gpu_metrics(CollectorRegistry()) is False
    server = serve(default_model_path(), providers="cpu", intra_op_threads=1)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "segment_requests" in text and "segment_gpu_" not in text


@pytest.mark.parametrize("visible", ["", "-1", "3", "3,-1,0"])
def test_a_device_the_process_cannot_see_is_not_read(monkeypatch: pytest.MonkeyPatch, visible: str) -> None:
    """CUDA_VISIBLE_DEVICES hides every device (empty, `-1`) or lists fewer than the device asked for: NVML, which
    numbers physical devices, must not be read for it (device 0 or 1 of the host is another process's GPU)."""
    module = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    asked = 1 if visible.startswith("3") else 0  # one past what this process sees
    assert nvml.device_handle(asked) is None
    assert register_gpu_metrics(CollectorRegistry(), [asked]) is False
    assert module.lookups == []
    assert nvml.visible_device_count() == asked
