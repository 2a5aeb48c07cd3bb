"""Confusion-matrix segmentation metrics, VOC protocol.

Pixels whose target is the ignore label (255), or any id >= num_classes, are left out. A class that appears
neither in the targets nor in the predictions of the whole split has an undefined IoU (0/0): it is reported
as NaN and left out of the mean. This is what the VOC devkit does in practice and what
`torchmetrics.JaccardIndex(task="multiclass", average="macro", ignore_index=255)` does (it gives such
classes zero weight), so the two agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a `num_classes x num_classes` matrix; rows are targets, columns predictions."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.out_of_range = 0  # target pixels with an id the model has no class for (not the ignore label)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        """Add one (or a batch of) label maps; shapes must match."""
        target = np.asarray(target).reshape(-1).astype(np.int64)
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        if target.shape != pred.shape:
            raise ValueError(f"target has {target.size} pixels, prediction {pred.size}")
        valid = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        self.out_of_range += int(np.count_nonzero(target != self.ignore_index)) - int(np.count_nonzero(valid))
        if np.any((pred[valid] < 0) | (pred[valid] >= self.num_classes)):
            raise ValueError(f"prediction holds class ids outside 0..{self.num_classes - 1}")
        n = self.num_classes
        self.matrix += np.bincount(n * target[valid] + pred[valid], minlength=n * n).reshape(n, n)

    def compute(self) -> SegmentationScores:
        return scores_from_confusion(self.matrix)


@dataclass(frozen=True)
class SegmentationScores:
    """mIoU, per-class IoU (NaN where undefined), pixel accuracy and mean class accuracy."""

    miou: float
    per_class_iou: list[float]
    pixel_accuracy: float
    mean_class_accuracy: float

    def as_dict(self, classes: list[str] | None = None) -> dict[str, object]:
        names = classes or [str(i) for i in range(len(self.per_class_iou))]
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_iou": {n: (None if np.isnan(v) else v) for n, v in zip(names, self.per_class_iou, strict=True)},
        }


def scores_from_confusion(matrix: np.ndarray) -> SegmentationScores:
    """Scores of a confusion matrix (rows = target, columns = prediction)."""
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        support = m.sum(1)
        class_acc = np.where(support > 0, tp / support, np.nan)
    total = m.sum()
    defined = ~np.isnan(iou)
    return SegmentationScores(
        miou=float(iou[defined].mean()) if defined.any() else float("nan"),
        per_class_iou=[float(v) for v in iou],
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        mean_class_accuracy=float(np.nanmean(class_acc)) if (support > 0).any() else float("nan"),
    )
