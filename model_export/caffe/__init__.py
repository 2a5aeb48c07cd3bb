"""Import the DeepLab-v2 Caffe weights without Caffe: a runtime-built caffe.proto subset and a converter.

The converter (torch, onnx) loads on first use, so `segment-export convert-caffe --help` needs neither.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CaffeError", "convert_caffemodel", "read_caffemodel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
