"""A stand-in `pynvml` module with NVML's interface, for tests on hosts without a GPU."""

from __future__ import annotations

import types
from types import SimpleNamespace


def fake_pynvml(power: bool = True, utilization: bool = True) -> types.ModuleType:
    """NVML's Python interface over two devices (index 0 and 3, UUIDs GPU-a and GPU-b); records lookups. `power`,
    `utilization`: whether the devices report them (else NVML_ERROR_NOT_SUPPORTED, as MIG instances do)."""
    module = types.ModuleType("pynvml")
    devices = {"0": ("dev0", 1_000, 8_000, 25, 70_500), "3": ("dev3", 3_000, 80_000, 90, 650_000)}
    by_uuid = {"GPU-a": "0", "GPU-b": "3"}
    module.lookups = []
    module.broken = False

    def handle(index: int) -> str:
        module.lookups.append(("index", index))
        return devices[str(index)][0]

    def handle_by_uuid(uuid: str) -> str:
        module.lookups.append(("uuid", uuid))
        return devices[by_uuid[uuid]][0]

    def row(h: str) -> tuple:
        if module.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return next(v for v in devices.values() if v[0] == h)

    def power_usage(h: str) -> int:
        if not power:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return row(h)[4]

    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = handle
    module.nvmlDeviceGetHandleByUUID = handle_by_uuid
    module.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=row(h)[1], total=row(h)[2])
    def utilization_rates(h: str) -> SimpleNamespace:
        if not utilization:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return SimpleNamespace(gpu=row(h)[3], memory=0)

    module.nvmlDeviceGetUtilizationRates = utilization_rates
    module.nvmlDeviceGetPowerUsage = power_usage
    return module
