"""torchvision's fast MobileNetV3-Large segmentation models in our `SegmentationModel` interface.

The networks are torchvision's own (built with no weights), only re-housed, so the key layout is
torchvision's (`backbone.*`, `classifier.*`, `aux_classifier.*`) and its published COCO-with-VOC-labels
files load with `strict=True`:

- `deeplabv3_mobilenet_v3_large`: dilated MobileNetV3-Large (output stride 16), DeepLab-v3 ASPP head;
- `lraspp_mobilenet_v3_large`: Lite R-ASPP, which fuses stride-8 ("low") and stride-16 ("high") features
  (logits at stride 8).
"""

from __future__ import annotations

import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large as tv_deeplabv3
from torchvision.models.segmentation import lraspp_mobilenet_v3_large as tv_lraspp

from .models import SegmentationModel


class LRASPPModel(SegmentationModel):
    """LR-ASPP's head reads two backbone outputs (`low`, `high`), so it gets the whole feature dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward(x), None


def deeplabv3_mobilenet_v3_large(num_classes: int = 21, aux_loss: bool = False) -> SegmentationModel:
    """torchvision's deeplabv3_mobilenet_v3_large (ImageNet preprocessing, output stride 16)."""
    tv = tv_deeplabv3(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)
    return SegmentationModel(tv.backbone, tv.classifier, tv.aux_classifier, "deeplabv3_mobilenet_v3_large",
                             "imagenet", 16)


def lraspp_mobilenet_v3_large(num_classes: int = 21, aux_loss: bool = False) -> SegmentationModel:
    """torchvision's lraspp_mobilenet_v3_large (ImageNet preprocessing, logits at stride 8; no aux head)."""
    if aux_loss:
        raise ValueError("lraspp_mobilenet_v3_large has no auxiliary head")
    tv = tv_lraspp(weights=None, weights_backbone=None, num_classes=num_classes)
    return LRASPPModel(tv.backbone, tv.classifier, None, "lraspp_mobilenet_v3_large", "imagenet", 8)
