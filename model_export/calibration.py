"""Calibration sets for int8 quantisation: real images from a folder, or synthetic scenes for the demo model.

Every image goes through the service's own decoder and letterbox (`service.core.decode`,
`service.core.letterbox`), so the activation ranges ORT calibrates are the ranges of the tensors the service
will feed: the same size, the same mean padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from service.core.contract import INPUT_NAME, ModelMetadata

from .catalog import DEFAULT_CALIBRATION_COUNT
from .errors import OPTION, ModelExportError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Synthetic calibration scenes come from their own seed, so they can never overlap a held-out split that
# `segment-export synth` writes with its default seed 0 (scene i depends only on (seed, i)).
SYNTHETIC_CALIBRATION_SEED = 8_001



class CalibrationError(ModelExportError):
    """Calibration images missing, unreadable or too few."""


@dataclass(frozen=True)
class CalibrationSet:
    """Letterboxed uint8 [S, S, 3] images plus what the variant's metadata records about them."""

    images: list[np.ndarray]
    sha256: str  # over the files' bytes in the order used (or over the rendered synthetic pixels)
    origin: str  # human-readable: "dir:<name>" or "synthetic:seed=<n>"

    @property
    def count(self) -> int:
        return len(self.images)


def is_synthetic_demo(meta: ModelMetadata) -> bool:
    """True when the model predicts exactly the synthetic scene classes, i.e. it is our demo model."""
    from . import synthetic

    return tuple(meta.classes) == tuple(synthetic.CLASSES)


def find_images(directory: Path, count: int) -> list[Path]:
    """The first `count` JPEG/PNG files of `directory` in name order (deterministic), or a CalibrationError."""
    if count <= 0:
        raise CalibrationError(f"{OPTION} must be positive, got {count}", option="calibration_count")
    if not directory.is_dir():
        raise CalibrationError(f"calibration directory {directory} does not exist or is not a directory",
                               option="calibration_dir")
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(f"calibration directory {directory} holds no JPEG or PNG images",
                               option="calibration_dir")
    return paths[:count]


def letterboxed(image: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """The service's letterbox of an RGB uint8 image to the model's input size (a fresh array)."""
    from service.core.letterbox import letterbox

    canvas, _ = letterbox(image, meta.input_size, meta.pad_rgb)
    return canvas.copy()


def decode_file(path: Path) -> np.ndarray:
    """Decode one image file exactly as the service decodes an upload (EXIF orientation, RGB)."""
    from service.core.decode import decode_image
    from service.core.errors import DecodeError

    try:
        return decode_image(path.read_bytes(), max_pixels=1 << 31)
    except DecodeError as exc:
        raise CalibrationError(f"calibration image {path} cannot be decoded: {exc}", option="calibration_dir") from None


def from_directory(directory: Path, count: int, meta: ModelMetadata) -> CalibrationSet:
    """Up to `count` images of `directory`, decoded and letterboxed as the service does."""
    paths = find_images(directory, count)
    digest = hashlib.sha256()
    images = []
    for path in paths:
        data = path.read_bytes()
        digest.update(hashlib.sha256(data).digest())
        images.append(letterboxed(decode_file(path), meta))
    return CalibrationSet(images, digest.hexdigest(), f"dir:{directory.name}")


def synthetic_set(count: int, meta: ModelMetadata, seed: int = SYNTHETIC_CALIBRATION_SEED) -> CalibrationSet:
    """`count` synthetic scenes, the distribution the demo model was trained on, letterboxed."""
    from .synthetic import render_scene

    digest = hashlib.sha256()
    images = []
    for i in range(count):
        img, _ = render_scene(seed, i)
        digest.update(hashlib.sha256(img.tobytes()).digest())
        images.append(letterboxed(img, meta))
    return CalibrationSet(images, digest.hexdigest(), f"synthetic:seed={seed}")


def calibration_set(meta: ModelMetadata, directory: Path | None, count: int) -> CalibrationSet:
    """Images from `directory`; without one, synthetic scenes for the demo model, else a CalibrationError."""
    if directory is not None:
        return from_directory(Path(directory), count, meta)
    if is_synthetic_demo(meta):
        return synthetic_set(count, meta)
    raise CalibrationError(
        f"int8 quantisation needs calibration images: pass {OPTION} DIR with JPEG/PNG photos like the ones the "
        f"model will serve (at least {DEFAULT_CALIBRATION_COUNT} recommended). Only the synthetic demo model can "
        "be calibrated without them.", option="calibration_dir")


class ImageReader(CalibrationDataReader):
    """Feeds letterboxed images to ORT's calibrator one batch-of-1 at a time (bounded memory)."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self._images = images
        self._it: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._it, None)
        return None if image is None else {INPUT_NAME: image[None]}

    def rewind(self) -> None:
        self._it = iter(self._images)
