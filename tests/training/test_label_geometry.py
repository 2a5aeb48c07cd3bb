"""The trainer's labels sit where the exported graph puts its logits: a mask trained through the loss and served
through the export must not come out shifted against the image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model_export.data import Augment
from model_export.loss import downsample_labels

STRIDE = 8
SIZE = 64


def _served(labels: torch.Tensor) -> torch.Tensor:
    """A model that had learnt the loss's targets exactly, served as the export serves it: the targets as one-hot
    logits, upsampled bilinearly with align_corners=False (`model_export.wrapper`), argmax."""
    target = downsample_labels(labels, (SIZE // STRIDE, SIZE // STRIDE))
    logits = F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    return F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False).argmax(1)


def test_a_bar_comes_back_where_it_was_at_every_sub_cell_offset() -> None:
    """Bars of several widths at every offset within a stride-8 cell: the centre of the served bar against the
    true one. Taking each block's top-left pixel (torch's plain "nearest") moved them right by 3.5 px on average,
    (stride - 1) / 2, and by up to 7; the block's centre leaves half a pixel (the centre of an even block falls
    between two pixels) and at most half a cell either way."""
    shifts = []
    for offset in range(STRIDE):
        for width in (17, 24, 31):
            labels = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
            left = 16 + offset
            labels[:, :, left:left + width] = 1
            columns = _served(labels)[0, 0].nonzero().float()
            shifts.append(float(columns.mean()) - (left + (width - 1) / 2))
    assert abs(np.mean(shifts)) <= 0.5, shifts
    assert max(abs(s) for s in shifts) <= STRIDE / 2, shifts


def test_scaling_keeps_the_labels_on_the_image() -> None:
    """The random scale of training resizes image and labels: one-pixel-wide lines must stay on the same pixels in
    both. At scale 0.5 the image's bilinear resize puts each line (an odd source column) into the output column
    covering it; INTER_NEAREST took every even source column only, so the labels lost every line."""
    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    for x in range(3, 64, 8):  # lines at odd columns: each pair of source pixels holds one line pixel, at its right
        image[:, x] = 255
        labels[:, x] = 1
    augment = Augment(crop_size=32, min_scale=0.5, max_scale=0.5, mirror=False)
    scaled_image, scaled_labels = augment(image, labels, np.random.default_rng(0))
    lit = np.flatnonzero(np.asarray(scaled_image)[..., 0].mean(axis=0) > 64)
    marked = np.flatnonzero(np.asarray(scaled_labels).max(axis=0) == 1)
    assert lit.tolist() == list(range(1, 32, 4)), lit
    assert marked.tolist() == lit.tolist(), (marked, lit)
