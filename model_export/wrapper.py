"""The in-graph pre/post-processing that turns a SegmentationModel into the ONNX contract:
uint8 NHWC RGB in, uint8 [N, H, W] labels (and optional uint8 confidence) out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from service.core.contract import CAFFE_MEAN_RGB, CAFFE_STD_RGB, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

from .models import SegmentationModel

PREPROCESSING = {
    # name: (mean RGB in 0..255, std RGB in 0..255, channel order the network expects)
    "imagenet": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, "RGB"),
    "caffe": (CAFFE_MEAN_RGB, CAFFE_STD_RGB, "BGR"),
}


def preprocessing_constants(name: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Mean and std (RGB order, pixel units) and channel order for a preprocessing convention."""
    try:
        return PREPROCESSING[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing {name!r}; choose one of {sorted(PREPROCESSING)}") from None


class Normalize(nn.Module):
    """float RGB NCHW in 0..255 -> the tensor the network was trained on. Training and export share it."""

    def __init__(self, preprocessing: str) -> None:
        super().__init__()
        mean, std, order = preprocessing_constants(preprocessing)
        # Buffers, not tensors built in forward, so tracing records them as constants without warnings.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.bgr = order == "BGR"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x[:, [2, 1, 0]] if self.bgr else x


def normalize_nchw(x: torch.Tensor, preprocessing: str) -> torch.Tensor:
    """Functional form of `Normalize`, for training loops."""
    return Normalize(preprocessing).to(x.device)(x)


def upsample_logits(model: SegmentationModel, logits: torch.Tensor, size: Sequence[int] | torch.Size,
                    ) -> torch.Tensor:
    """Bilinear upsampling of `model`'s logits to `size`, with the pixel mapping its weights were trained for
    (`SegmentationModel.upsample_align_corners`): export and evaluation share it, so they score what is served."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=model.upsample_align_corners)


def upsampling_name(model: SegmentationModel) -> str:
    """The ONNX Resize coordinate mode the exported graph upsamples the logits with, for the metadata."""
    return "align_corners" if model.upsample_align_corners else "half_pixel"


class ExportWrapper(nn.Module):
    """uint8 NHWC RGB -> normalise -> model -> bilinear upsample to input HxW (`upsample_logits`) -> argmax ->
    uint8."""

    def __init__(self, model: SegmentationModel, confidence: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalize = Normalize(model.preprocessing)
        self.confidence = confidence

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        x = self.normalize(x)
        logits = self.model(x)
        # size from the input's runtime shape (not a Python int) keeps H and W dynamic in the traced graph.
        logits = upsample_logits(self.model, logits, image.shape[1:3])
        # ArgMax yields int64; the contract is uint8 (<= 255 classes, checked by the metadata).
        labels = logits.argmax(dim=1).to(torch.uint8)
        if not self.confidence:
            return labels
        conf = torch.softmax(logits, dim=1).amax(dim=1)
        return labels, torch.round(conf * 255.0).to(torch.uint8)
