"""Every architecture by name: how to build it and the input size it was designed around (`catalog` holds the
same names and sizes without torch, for the CLI's help)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .catalog import ARCH_INPUT_SIZES
from .mobilenet import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large
from .models import (
    SegmentationModel,
    deeplabv2_resnet101,
    deeplabv2_thin,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
    deeplabv3_thin,
)


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and what it was designed around."""

    builder: Callable[..., SegmentationModel]
    default_input_size: int


ARCHITECTURES: dict[str, ArchSpec] = {
    name: ArchSpec(builder, ARCH_INPUT_SIZES[name]) for name, builder in (
        ("deeplabv2_resnet101", deeplabv2_resnet101),
        ("deeplabv3_resnet50", deeplabv3_resnet50),
        ("deeplabv3_resnet101", deeplabv3_resnet101),
        ("deeplabv2_thin", deeplabv2_thin),
        ("deeplabv3_thin", deeplabv3_thin),
        ("deeplabv3_mobilenet_v3_large", deeplabv3_mobilenet_v3_large),
        ("lraspp_mobilenet_v3_large", lraspp_mobilenet_v3_large),
    )
}


def build_model(arch: str, num_classes: int = 21, **kwargs: object) -> SegmentationModel:
    """Build an architecture by name; kwargs go to its builder (aux_loss, output_stride, ...)."""
    try:
        spec = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None
    return spec.builder(num_classes=num_classes, **kwargs)
