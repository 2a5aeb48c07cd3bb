"""Benchmark models: one seeded PyTorch model exported through the real exporter, so ONNX Runtime, PyTorch eager
and the service all run the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model_export.architectures import build_model
from model_export.export import build_metadata, export_onnx
from model_export.wrapper import ExportWrapper


def parse_kwargs(spec: str) -> dict[str, Any]:
    """`base_width=16,head_channels=64` → {'base_width': 16, 'head_channels': 64}."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        out[key] = int(value)
    return out


def bench_model(out: Path, arch: str, input_size: int, num_classes: int = 21, seed: int = 0,
                **kwargs: Any) -> tuple[Path, ExportWrapper]:
    """Export a seeded `arch` (random weights) to `out`; return the file and the eager contract wrapper."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, **kwargs).eval()
    meta = build_metadata(model, num_classes=num_classes, input_size=input_size,
                          source=f"bench: random init, seed {seed}")
    path = export_onnx(model, out, meta)
    return path, ExportWrapper(model).eval()
