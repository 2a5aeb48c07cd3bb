"""What `segment-export` offers, as plain data with no torch import: architecture names and torchvision's
published weights. The CLI builds its parsers from here, so `--help` is instant; `models.ARCHITECTURES` and
`weights` use the same names (a test keeps them equal)."""

from __future__ import annotations

# model_export.models.ARCHITECTURES, in the same order.
ARCH_NAMES: tuple[str, ...] = (
    "deeplabv2_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv2_thin", "deeplabv3_thin",
    "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
)

# torchvision's published COCO-trained (VOC label set) weights; see
# torchvision/models/segmentation/{deeplabv3,lraspp}.py (COCO_WITH_VOC_LABELS_V1).
DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
PUBLISHED: dict[str, str] = {
    "deeplabv3_resnet50": "deeplabv3_resnet50_coco-cd0a2569.pth",
    "deeplabv3_resnet101": "deeplabv3_resnet101_coco-586e9e4e.pth",
    "deeplabv3_mobilenet_v3_large": "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
    "lraspp_mobilenet_v3_large": "lraspp_mobilenet_v3_large-d234d4ea.pth",
}
# torchvision evaluates these weights after resizing the short side to 520.
PUBLISHED_INPUT_SIZE = 520
BASE_URL_ENV = "SEGMENT_WEIGHTS_BASE_URL"
CACHE_ENV = "SEGMENT_CACHE_DIR"

# DeepLab's multi-scale test (MSC): the scales whose upsampled logits are fused by max.
DEEPLAB_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0)
