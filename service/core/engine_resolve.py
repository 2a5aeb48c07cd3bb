"""What an engine loads, resolved from its options: the execution providers and the model file's precision
variant, and `EngineError`, the error an engine that cannot start raises."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from .sessions import CPU, CUDA, TENSORRT

_SHORT_NAMES = {
    "cuda": CUDA, "cpu": CPU, "tensorrt": TENSORRT, "trt": TENSORRT,
    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider",
}


class EngineError(RuntimeError):
    """The engine cannot start: missing model file, unusable provider, or a required GPU absent.

    `setting` names the `EngineOptions` field at fault, so that a front end can name its own knob for it.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


def resolve_providers(spec: str, available: Sequence[str] | None = None) -> list[str]:
    """Provider names in priority order from a settings string ('auto' or a comma list)."""
    available = list(ort.get_available_providers() if available is None else available)
    if spec.strip().lower() == "auto":
        return [p for p in (CUDA, CPU) if p in available] or [CPU]
    wanted = [_SHORT_NAMES.get(name.strip().lower(), name.strip()) for name in spec.split(",") if name.strip()]
    if not wanted:  # ',' or blanks: the first provider listed runs the model, and there is none
        raise EngineError(f"no execution provider is listed (got {spec!r}); give 'auto' or a comma list such as "
                          "'cuda,cpu'", "providers")
    if TENSORRT in wanted:
        # Never run on a GPU here: it would need an engine cache, fp16 and shape profiles per bucket to be usable
        # (without a cache every start rebuilds its engines), and none of that is built or measured.
        raise EngineError("the TensorRT execution provider is not supported; use 'cuda' (with fixed-shape "
                          "buckets and fp16 it needs no TensorRT)", "providers")
    unknown = [p for p in wanted if p not in available]
    if unknown:
        raise EngineError(f"execution providers {unknown} are not available in this onnxruntime build "
                          f"(available: {available})", "providers")
    return wanted


def resolve_model_path(path: Path, precision: str, cuda_active: bool) -> Path:
    """Pick the precision variant of a model: `x.onnx` → sibling `x.fp16.onnx` / `x.int8.onnx`.

    'auto' prefers fp16 on CUDA when the sibling exists and stays on the given file otherwise; an explicit
    precision requires its variant (or the given file itself when it already is that variant).
    """
    if precision in ("auto", "fp32") and not (precision == "auto" and cuda_active):
        return path
    variant = "fp16" if precision == "auto" else precision
    if path.name.endswith(f".{variant}.onnx"):
        return path
    sibling = path.with_name(f"{path.name.removesuffix('.onnx')}.{variant}.onnx")
    if sibling.exists():
        return sibling
    if precision == "auto":
        return path
    raise EngineError(f"precision {precision} needs a sibling file, but {sibling} does not exist "
                      f"(export it with segment-export, or use precision auto)", "precision")
