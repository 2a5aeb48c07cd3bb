"""The ONNX contract shared by the exporter and the service (docs/CONTRACT.md).

This module is deliberately free of torch and onnx: the exporter writes these keys, the service reads them
through onnxruntime's model metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

INPUT_NAME = "image"
LABELS_OUTPUT = "labels"
CONFIDENCE_OUTPUT = "confidence"

# Keys every contract-conforming model carries in `metadata_props`.
REQUIRED_KEYS = ("classes", "palette", "input_size", "arch", "source", "mean", "std")

# torchvision / ImageNet convention, in 0..255 pixel units, RGB order.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# The DeepLab-v2 Caffe convention: BGR input, mean subtracted, no std division. Listed here in RGB order.
CAFFE_MEAN_RGB = (122.675, 116.669, 104.008)
CAFFE_STD_RGB = (1.0, 1.0, 1.0)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class ContractError(ValueError):
    """A model file does not meet the ONNX contract."""


class LabelsShapeError(ContractError):
    """The model's labels do not have its input's batch, height and width: the model, not the device, is wrong."""

    @staticmethod
    def check(labels_shape: tuple[int, ...], input_shape: tuple[int, ...]) -> None:
        """Raise unless `labels_shape` is the input's batch, height and width."""
        if tuple(labels_shape) != tuple(input_shape[:3]):
            raise LabelsShapeError(f"model returned labels {tuple(labels_shape)} for input {tuple(input_shape)}: "
                                   f"the contract's {LABELS_OUTPUT!r} output has the input's batch, height and width")


class BatchSizeError(ContractError):
    """The model runs one image but fails a batch of several: its batch dimension is declared dynamic and is not."""


def voc_colormap(n: int = 256) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved class ids), the palette VOC label PNGs use."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the service needs to know about a model, stored in the ONNX `metadata_props`."""

    classes: list[str]
    palette: list[list[int]]
    input_size: int
    arch: str
    source: str
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN_RGB))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD_RGB))
    channel_order: str = "RGB"
    ignore_index: int = 255
    precision: str = "fp32"
    project_version: str = "0.1.0"
    source_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ContractError("metadata 'classes' is empty")
        if len(self.classes) > 255:
            raise ContractError(f"{len(self.classes)} classes do not fit the uint8 label output (max 255)")
        if len(self.palette) < len(self.classes):
            raise ContractError(
                f"metadata 'palette' has {len(self.palette)} colours for {len(self.classes)} classes"
            )
        for colour in self.palette:
            if len(colour) != 3 or not all(0 <= int(v) <= 255 for v in colour):
                raise ContractError(f"metadata 'palette' entry {colour!r} is not an [r, g, b] triple")
        if self.input_size <= 0:
            raise ContractError(f"metadata 'input_size' must be positive, got {self.input_size}")
        # The mean pads every letterboxed image (`pad_rgb`): a value outside 0..255 cannot be a uint8 pixel.
        if len(self.mean) != 3 or not all(math.isfinite(v) and 0 <= v <= 255 for v in self.mean):
            raise ContractError(f"metadata 'mean' must be three finite numbers in 0..255, got {list(self.mean)}")
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ContractError(f"metadata 'std' must be three finite numbers above 0, got {list(self.std)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ContractError(f"metadata 'channel_order' must be RGB or BGR, got {self.channel_order!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pad_rgb(self) -> tuple[int, int, int]:
        """Letterbox padding colour: the mean, which the in-graph normalisation maps to zero."""
        return tuple(round(v) for v in self.mean)  # type: ignore[return-value]

    def to_props(self) -> dict[str, str]:
        """Serialise to ONNX `metadata_props` (string to string)."""
        props = {
            "classes": json.dumps(list(self.classes)),
            "palette": json.dumps([[int(v) for v in c] for c in self.palette]),
            "input_size": str(int(self.input_size)),
            "arch": self.arch,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "mean": json.dumps([float(v) for v in self.mean]),
            "std": json.dumps([float(v) for v in self.std]),
            "channel_order": self.channel_order,
            "ignore_index": str(int(self.ignore_index)),
            "precision": self.precision,
            "project_version": self.project_version,
        }
        props.update(self.extra)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse ONNX `metadata_props`; raise ContractError naming what is missing or malformed."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ContractError(
                f"model metadata is missing {missing}; export it with `segment-export export` "
                "so classes, palette, input size and normalisation travel with the graph"
            )
        known = {
            "classes", "palette", "input_size", "arch", "source", "source_sha256", "mean", "std",
            "channel_order", "ignore_index", "precision", "project_version",
        }
        try:
            return cls(
                classes=_names(props, "classes"),
                palette=_colours(props, "palette"),
                input_size=int(props["input_size"]),
                arch=props["arch"],
                source=props["source"],
                source_sha256=props.get("source_sha256", ""),
                mean=_numbers(props, "mean"),
                std=_numbers(props, "std"),
                channel_order=props.get("channel_order", "RGB"),
                ignore_index=int(props.get("ignore_index", "255")),
                precision=props.get("precision", "fp32"),
                project_version=props.get("project_version", ""),
                extra={k: v for k, v in props.items() if k not in known},
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(f"model metadata is malformed: {exc}") from exc


def _json(props: dict[str, str], key: str) -> Any:
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as exc:
        raise ContractError(f"model metadata {key!r} is not valid JSON: {exc}") from exc


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is no number here


def _names(props: dict[str, str], key: str) -> list[str]:
    """A JSON list of strings: a JSON string would otherwise be read letter by letter ("abc": 3 classes)."""
    value = _json(props, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ContractError(f"metadata {key!r} must be a JSON list of names, got {props[key][:80]!r}")
    return value


def _colours(props: dict[str, str], key: str) -> list[list[int]]:
    """A JSON list of [r, g, b] lists of whole numbers (their range is checked with the classes)."""
    value = _json(props, key)
    if not isinstance(value, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(_is_number(v) and float(v).is_integer() for v in c)
            for c in value):
        raise ContractError(f"metadata {key!r} must be a JSON list of [r, g, b] lists, got {props[key][:80]!r}")
    return [[int(v) for v in c] for c in value]


def _numbers(props: dict[str, str], key: str) -> list[float]:
    """A JSON list of three numbers (mean, std); their range is checked on the metadata."""
    value = _json(props, key)
    if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value):
        raise ContractError(f"metadata {key!r} must be a JSON list of 3 numbers, got {props[key][:80]!r}")
    return [float(v) for v in value]
