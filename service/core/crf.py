"""DeepLab-v2's dense CRF post-processing (Krähenbühl & Koltun's fully connected CRF) on softmax scores.

Uses `pydensecrf2` (the maintained fork of pydensecrf, MIT), an optional dependency: `pip install
'.[crf]'`. Torch-free: `POST /segment?crf=true` and `segment-export evaluate --crf` both use it.

Default parameters are DeepLab-v2's for ResNet-101 on VOC, as kazuto1011/deeplab-pytorch's `voc12.yaml`
records them: 10 mean-field iterations, appearance kernel weight 4 with σ_xy 67 and σ_rgb 3, smoothness
kernel weight 3 with σ_xy 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .letterbox import LetterboxInfo


class CrfUnavailable(RuntimeError):
    """pydensecrf2 is not installed."""


@dataclass(frozen=True)
class CrfParams:
    """Mean-field iterations and the two pairwise kernels (DeepLab-v2's names in comments)."""

    iterations: int = 10  # ITER_MAX
    bilateral_weight: float = 4.0  # BI_W
    bilateral_xy: float = 67.0  # BI_XY_STD
    bilateral_rgb: float = 3.0  # BI_RGB_STD
    gaussian_weight: float = 3.0  # POS_W
    gaussian_xy: float = 1.0  # POS_XY_STD


def available() -> bool:
    """Whether pydensecrf2 can be imported here."""
    try:
        _densecrf()
    except CrfUnavailable:
        return False
    return True


def _densecrf():  # type: ignore[no-untyped-def]
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise CrfUnavailable("CRF post-processing needs pydensecrf2: pip install 'segment-service[crf]'") from None
    return dcrf


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """Refined uint8 labels [H, W] from an RGB uint8 image [H, W, 3] and class probabilities [C, H, W]."""
    dcrf = _densecrf()
    c, h, w = probs.shape
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 {(h, w, 3)} to match the scores, got {image.dtype} {image.shape}")
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_xy, compat=params.gaussian_weight)
    crf.addPairwiseBilateral(sxy=params.bilateral_xy, srgb=params.bilateral_rgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_weight)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(c, h, w)
    return q.argmax(0).astype(np.uint8)


def probs_from_labels(labels: np.ndarray, num_classes: int, confidence: np.ndarray | float = 0.7) -> np.ndarray:
    """Scores [C, H, W] for a model that only outputs labels (the ONNX contract): the predicted class gets
    `confidence` (the optional uint8 `confidence` output / 255, or a constant), the others share the rest."""
    conf = np.asarray(confidence, dtype=np.float32)
    lo = 1.0 / num_classes + 1e-3  # keep the predicted class the most likely one
    conf = np.clip(conf, lo, 1.0 - 1e-3)
    rest = (1.0 - conf) / (num_classes - 1)
    probs = np.broadcast_to(rest, labels.shape)[None].repeat(num_classes, 0).astype(np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), np.broadcast_to(conf, labels.shape)[None], axis=0)
    return probs


def crf_on_canvas(canvas: np.ndarray, probs: np.ndarray, info: LetterboxInfo, params: CrfParams) -> np.ndarray:
    """Dense CRF over the image region of a canvas (padding excluded); labels [canvas H, W], 0 elsewhere."""
    region = (slice(info.top, info.top + info.new_h), slice(info.left, info.left + info.new_w))
    labels = np.zeros(canvas.shape[:2], np.uint8)
    labels[region] = dense_crf(np.ascontiguousarray(canvas[region]),
                               np.ascontiguousarray(probs[:, region[0], region[1]]), params)
    return labels
