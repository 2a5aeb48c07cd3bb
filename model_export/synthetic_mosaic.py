"""Large synthetic images with small objects: mosaics of scenes, each drawn at the scale the embedded model was
trained to see, in the VOC layout. What `resolution` (tiled inference) is for, scored against exact masks
(`bench/tiles_bench.py`, the tests of `segment-export evaluate --resolution`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .synthetic import SceneConfig, render_scene, save_label_png, voc_paths

SCENE = 160  # the embedded model's scenes: long side 160, served at its input size 320
CELL = 2 * SCENE


def mosaic(seed: int, first: int, cols: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`cols` x `rows` square scenes (`first` onwards of generator `seed`), each enlarged 2x as the service enlarges
    a scene for the model: the image and its labels."""
    config = SceneConfig(min_side=SCENE, max_side=SCENE)
    image = np.empty((rows * CELL, cols * CELL, 3), np.uint8)
    label = np.empty((rows * CELL, cols * CELL), np.uint8)
    for index in range(cols * rows):
        scene, truth = render_scene(seed, first + index, config)
        r, c = divmod(index, cols)
        cell = np.s_[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
        image[cell] = cv2.resize(scene, (CELL, CELL), interpolation=cv2.INTER_LINEAR)
        label[cell] = cv2.resize(truth, (CELL, CELL), interpolation=cv2.INTER_NEAREST)
    return image, label


def write_mosaics(root: Path, images: int, cols: int, rows: int, seed: int = 1) -> None:
    """A VOC-layout `val` split of `images` mosaics under `root` (JPEG quality 95, as `segment-export synth`
    writes scenes); seed 1 by default: scenes the embedded model never trained on."""
    voc = voc_paths(root)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(images):
        name = f"mosaic_{i:04d}"
        image, label = mosaic(seed, i * cols * rows, cols, rows)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        save_label_png(label, voc / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
