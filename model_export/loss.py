"""The training loss: cross entropy on labels nearest-downsampled to the logits (255 ignored), and the seed's
multi-scale loss (per-scale terms plus the term of the element-wise max over scales)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE_INDEX


def downsample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of int label maps [N,H,W] to `size` (the logits' H, W): each logit cell gets the
    label at the centre of the input block it covers.

    Why the centre: the exported graph upsamples the logits bilinearly with `align_corners=False`, which places
    cell i at the centre of its block (pixel (i + 0.5)·s − 0.5 at stride s), so the cell must be trained on the
    label found there. Torch's plain "nearest" takes the block's top-left pixel (i·s); a model trained on those
    labels learns them, and served through the export its masks came out shifted right and down by (s − 1)/2
    input pixels (3.5 at stride 8, measured on the earlier demo model: 4 px at its 320-px input)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")
    return out[:, 0].long()


def seg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignored pixels, labels nearest-downsampled to the logits; 0 if all are ignored."""
    target = downsample_labels(labels, logits.shape[-2:])
    valid = (target != IGNORE_INDEX).sum()
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / valid.clamp(min=1)


def multiscale_logits(model: nn.Module, x: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
    """Logits of the model on `x` bilinearly resized by each scale (the first scale should be 1)."""
    h, w = x.shape[-2:]
    outs = []
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, size=(int(h * s), int(w * s)), mode="bilinear",
                                            align_corners=False)
        outs.append(model(xs))
    return outs


def multiscale_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Seed's train_msc loss: Σ_s CE(logits_s) + CE(max_s logits_s), the smaller-scale logits bilinearly
    upsampled to the first (scale 1) logits' size before the max. One scale: plain CE."""
    loss = sum(seg_cross_entropy(lg, labels) for lg in logits)
    if len(logits) > 1:
        size = logits[0].shape[-2:]
        fused = logits[0]
        for lg in logits[1:]:
            up = F.interpolate(lg, size=size, mode="bilinear", align_corners=False)
            fused = torch.maximum(fused, up)
        loss = loss + seg_cross_entropy(fused, labels)
    return loss  # type: ignore[return-value]
