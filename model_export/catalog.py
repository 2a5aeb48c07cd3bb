"""What `segment-export` offers, as plain data with no torch import: architectures with the input size each was
designed around, and the published weights as one table of sources (as torchvision's `Weights` enums are). The
CLI builds its parsers from here, so `--help` is instant; `architectures.ARCHITECTURES` and `weights` use the same names
(a test keeps them equal)."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.contract import VOC_CLASSES

# Each architecture (model_export.architectures.ARCHITECTURES, in the same order) and the square input size it was
# designed around: DeepLab's 513 for the ResNets (VOC's evaluation size), the thin models' training crops, and
# the 520 torchvision evaluates its MobileNetV3 weights at.
ARCH_INPUT_SIZES: dict[str, int] = {
    "deeplabv2_resnet101": 513, "deeplabv3_resnet50": 513, "deeplabv3_resnet101": 513, "deeplabv2_thin": 321,
    "deeplabv3_thin": 256, "deeplabv3_mobilenet_v3_large": 520, "lraspp_mobilenet_v3_large": 520,
}
ARCH_NAMES: tuple[str, ...] = tuple(ARCH_INPUT_SIZES)


def default_input_size(arch: str) -> int:
    """The input size `arch` was designed around; ValueError for an architecture we do not know."""
    try:
        return ARCH_INPUT_SIZES[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCH_INPUT_SIZES)}") from None

# torchvision's published COCO-trained (VOC label set) weights; see
# torchvision/models/segmentation/{deeplabv3,lraspp}.py (COCO_WITH_VOC_LABELS_V1).
DEFAULT_BASE_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class WeightSource:
    """One set of published weights: where it is, how to check it, and what the model it fills predicts."""

    name: str  # what users ask for (`segment-export pretrained NAME`)
    arch: str  # the architecture the weights load into
    file: str  # the file name under the base URL; its sha256 starts with the hex after the last '-'
    classes: tuple[str, ...]
    preprocessing: str  # the normalisation the weights were trained with (model_export.wrapper)
    input_size: int  # the size the publisher evaluates them at

    @property
    def sha256_prefix(self) -> str:
        return self.file.rsplit("-", 1)[1].split(".", 1)[0]

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return base_url.rstrip("/") + "/" + self.file


# torchvision evaluates these weights after resizing the short side to 520.
_TORCHVISION_EVAL_SIZE = 520
WEIGHT_SOURCES: dict[str, WeightSource] = {source.name: source for source in (
    WeightSource("deeplabv3_resnet50", "deeplabv3_resnet50", "deeplabv3_resnet50_coco-cd0a2569.pth",
                 VOC_CLASSES, "imagenet", _TORCHVISION_EVAL_SIZE),
    WeightSource("deeplabv3_resnet101", "deeplabv3_resnet101", "deeplabv3_resnet101_coco-586e9e4e.pth",
                 VOC_CLASSES, "imagenet", _TORCHVISION_EVAL_SIZE),
    WeightSource("deeplabv3_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large",
                 "deeplabv3_mobilenet_v3_large-fc3c493d.pth", VOC_CLASSES, "imagenet", _TORCHVISION_EVAL_SIZE),
    WeightSource("lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_large-d234d4ea.pth",
                 VOC_CLASSES, "imagenet", _TORCHVISION_EVAL_SIZE),
)}
# name -> file, the view the downloader and its tests use.
PUBLISHED: dict[str, str] = {name: source.file for name, source in WEIGHT_SOURCES.items()}
BASE_URL_ENV = "SEGMENT_WEIGHTS_BASE_URL"
CACHE_ENV = "SEGMENT_CACHE_DIR"

# Export settings the torch-free CLI shows in `--help` and the exporters default to: written once, here.
DEFAULT_OPSET = 17
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")  # fp32 first: the plain export, the others its variants
DEFAULT_CALIBRATION_COUNT = 32  # int8 calibration images

# DeepLab's multi-scale test (MSC): the scales whose upsampled logits are fused by max.
DEEPLAB_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0)
