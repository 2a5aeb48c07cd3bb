"""A model's label map for the label-map and output-encoding tests: seeded blobs and speckles."""

from __future__ import annotations

import cv2
import numpy as np


def model_output(size: int, seed: int, n_classes: int = 5) -> np.ndarray:
    """A size×size map of blobs and speckles, like a segmentation with noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(12):
        cx, cy, r = rng.integers(0, size, 3)
        cv2.circle(labels, (int(cx), int(cy)), int(r) // 3 + 1, int(rng.integers(1, n_classes)), -1)
    speckle = rng.random((size, size)) < 0.01
    labels[speckle] = rng.integers(0, n_classes, int(speckle.sum()))
    return labels
