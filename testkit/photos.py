"""Real photographs for parity tests, from the sample images that scikit-image ships (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def photo_path(name: str) -> Path:
    """Path of a bundled scikit-image sample photograph."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is required for the real-photo fixtures (pip install '.[dev]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"scikit-image sample photo {path} is missing")
    return path


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A real RGB photograph as uint8 HxWx3, optionally resized to (width, height)."""
    img = Image.open(photo_path(name)).convert("RGB")
    if size is not None:
        img = img.resize(size, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()
