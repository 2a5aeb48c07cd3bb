"""Exports for the parity tests: a model with real BatchNorm statistics exported through the real exporter with
its ONNX Runtime session, and batches of real photographs at a given size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model_export.architectures import build_model
from model_export.export import build_metadata, export_onnx
from model_export.wrapper import ExportWrapper
from testkit.photos import PHOTOS, photo


def _calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Give BN layers real running statistics, as a trained model has; with default stats a random deep
    net predicts one class everywhere and parity would be trivial."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        images = torch.from_numpy(_batch((161, 193), 4)).permute(0, 3, 1, 2).float()
        model(ExportWrapper(model).normalize(images))
    model.eval()


def _export(arch: str, kwargs: dict, tmp_path: Path, confidence: bool = False):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=21, **kwargs)
    _calibrate_batchnorm(model)
    meta = build_metadata(model, num_classes=21, input_size=321, source="tests")
    path = export_onnx(model, tmp_path / f"{arch}.onnx", meta, confidence=confidence)
    return model, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _batch(size: tuple[int, int], n: int) -> np.ndarray:
    h, w = size
    return np.stack([photo(PHOTOS[i % len(PHOTOS)], size=(w, h)) for i in range(n)])
