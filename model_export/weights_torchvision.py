"""torchvision's published segmentation layouts (deeplabv3 ResNet-50/101, the MobileNetV3-Large models): which
architecture a state_dict is, and the model it fills."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .architectures import build_model
from .errors import WeightsError
from .models import SegmentationModel
from .torch_io import listing
from .weights_files import load_state_dict_checked

# The main head's last conv in each torchvision layout: its first dimension is the number of classes.
_HEAD_KEYS = {"lraspp_mobilenet_v3_large": "classifier.high_classifier.weight"}


def infer_torchvision_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """deeplabv3_resnet50 or _resnet101 from the depth of layer3 (6 or 23 blocks) in a torchvision file;
    the MobileNetV3 models from their head (LR-ASPP's two classifiers) and their features' keys."""
    if "classifier.high_classifier.weight" in state_dict:
        return "lraspp_mobilenet_v3_large"
    if "backbone.0.0.weight" in state_dict and "classifier.4.weight" in state_dict:
        return "deeplabv3_mobilenet_v3_large"
    blocks = {k.split(".")[2] for k in state_dict if k.startswith("backbone.layer3.")}
    depth = {6: "deeplabv3_resnet50", 23: "deeplabv3_resnet101"}.get(len(blocks))
    if depth is None:
        raise WeightsError(
            f"cannot tell the architecture of this state_dict (backbone.layer3 has {len(blocks)} blocks); "
            "pass arch explicitly"
        )
    return depth


def load_torchvision_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str | None = None, *,
                                keep_aux: bool = True, what: str = "state_dict") -> SegmentationModel:
    """Build `arch` with the file's class count and aux head (if any) and load it with strict checking.

    With keep_aux=False the aux head's keys are dropped and the model is built without it, which is what
    inference and export want.
    """
    arch = arch or infer_torchvision_arch(state_dict)
    head = _HEAD_KEYS.get(arch, "classifier.4.weight")
    if head not in state_dict:
        raise WeightsError(f"{what} has no {head}: not a torchvision deeplabv3 layout "
                           f"(first keys: {listing(sorted(state_dict))})")
    num_classes = int(state_dict[head].shape[0])
    has_aux = any(k.startswith("aux_classifier.") for k in state_dict)
    if not keep_aux:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}
    try:
        model = build_model(arch, num_classes, aux_loss=has_aux and keep_aux)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"cannot build {arch}: {exc}") from None
    load_state_dict_checked(model, state_dict, what)
    return model.eval()
