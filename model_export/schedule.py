"""DeepLab-v2's optimisation schedule: SGD with momentum, poly LR, and the head at 10x (weights) / 20x (biases)
the backbone's rate; plus frozen BatchNorm, which the seed trains with."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPPPooling

from .models import SegmentationModel

MOMENTUM = 0.9
POLY_POWER = 0.9


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = POLY_POWER) -> float:
    """The seed's poly schedule: base · (1 − it/max)^power."""
    return base_lr * (1.0 - iteration / max_iter) ** power


def param_groups(model: SegmentationModel, weight_decay: float = 5e-4) -> list[dict[str, Any]]:
    """SGD parameter groups, each tagged with `name` and `lr_mult`.

    backbone: conv weights 1× (decayed); norm affine params 1× (not decayed; only trainable with --train-bn).
    head (`model.head_modules()`): weights 10× (decayed), biases 20× (not decayed), norm weights 10×.
    As in the seed, biases and BN parameters carry no weight decay.
    """
    head_ids = {id(p) for m in model.head_modules() for p in m.parameters()}
    groups: dict[str, dict[str, Any]] = {
        "backbone_weight": {"lr_mult": 1.0, "weight_decay": weight_decay},
        "backbone_norm_bias": {"lr_mult": 1.0, "weight_decay": 0.0},
        "head_weight": {"lr_mult": 10.0, "weight_decay": weight_decay},
        "head_norm": {"lr_mult": 10.0, "weight_decay": 0.0},
        "head_bias": {"lr_mult": 20.0, "weight_decay": 0.0},
    }
    members: dict[str, list[nn.Parameter]] = {k: [] for k in groups}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_head = id(p) in head_ids
        if p.ndim > 1:
            key = "head_weight" if in_head else "backbone_weight"
        elif name.endswith("bias"):
            key = "head_bias" if in_head else "backbone_norm_bias"
        else:  # 1-D weights are normalisation scales
            key = "head_norm" if in_head else "backbone_norm_bias"
        members[key].append(p)
    return [{"name": k, "params": members[k], **groups[k]} for k in groups if members[k]]


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, max_iter: int) -> float:
    """Apply the poly LR (times each group's multiplier); returns the base LR of this iteration."""
    lr = poly_lr(base_lr, iteration, max_iter)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


def freeze_bn(model: nn.Module, statistics: bool = True, trainable: Collection[str] = (),
              trainable_statistics: bool = True) -> None:
    """BN affine parameters (gamma/beta) untrainable, like the seed; with `statistics`, BN also in eval mode
    (running statistics stay). `statistics=False` is the seed's `--is-training`: statistics update, while
    gamma and beta stay as loaded (DrSleep's trainer excludes them from the trainable variables).

    `trainable`: names (as `named_modules` gives them) of BN layers whose gamma/beta train all the same, and with
    `trainable_statistics` their statistics too: the freshly initialised BNs of a new head (model_export.train).
    Without it they keep their statistics (eval mode): a batch of one image gives the image-pooling branch's BN
    one value per channel, nothing to take statistics of."""
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if name in trainable:
            if not trainable_statistics:
                m.eval()
            continue
        if statistics:
            m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def head_norms(model: SegmentationModel) -> dict[str, nn.Module]:
    """The BN layers under `model.head_modules()`, by their name in `model.named_modules()`."""
    heads = {id(m) for head in model.head_modules() for m in head.modules()}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) in heads}


def hold_pooled_statistics(model: nn.Module) -> list[str]:
    """Put the BN layers of DeepLab-v3's image-pooling branch (torchvision's `ASPPPooling`) in eval mode, and return
    their names: for BN that trains at one image per batch. That branch normalises a 1x1 map, one value per channel
    with a single image, so training mode has no statistics to take and fails ("Expected more than 1 value per
    channel"); they keep their running statistics, and their gamma/beta train as before."""
    pooled = {id(m) for branch in model.modules() if isinstance(branch, ASPPPooling) for m in branch.modules()}
    held = [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) in pooled]
    for name in held:
        model.get_submodule(name).eval()
    return held
