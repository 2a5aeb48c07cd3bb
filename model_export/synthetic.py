"""Synthetic segmentation scenes with exact masks, written in the PASCAL VOC 2012 layout.

Each object class has its own shape *and* its own texture/colour family, so a small network can learn it in
minutes; backgrounds are low-saturation noise fields with clutter so that colour alone is not quite enough.
Objects are drawn back to front, so the mask respects occlusion. Everything is deterministic from a seed:
scene `i` of a dataset depends only on `(seed, i)`, never on how many scenes came before it.

`segment-export synth --out DIR --train 400 --val 100 --seed 0` (model_export.synth_cli) writes
`DIR/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from service.core.contract import voc_colormap

# Class 0 is the background; the rest are drawn objects. The names are what the demo model reports.
CLASSES = ("background", "disc", "square", "triangle", "ring", "stripes", "cross")
PALETTE = voc_colormap(len(CLASSES))
IGNORE_INDEX = 255


@dataclass(frozen=True)
class SceneConfig:
    """Scene geometry. Sizes are in pixels; object size (diameter) is a fraction of the short image side."""

    min_side: int = 112  # short side range; the long side is always max_side
    max_side: int = 160
    min_objects: int = 1
    max_objects: int = 4
    min_scale: float = 0.35
    max_scale: float = 0.75
    ignore_border: int = 0  # width of a 255 band on object boundaries (VOC style); 0 = exact masks


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out.reshape(h, w, channels), 0.0, 1.0)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, textured and noisy background with a few thin clutter lines."""
    base = rng.uniform(70, 190, size=3).astype(np.float32)
    tint = (_smooth_noise(rng, h, w, int(rng.integers(3, 8))) - 0.5) * rng.uniform(40, 90)
    grain = rng.normal(0, rng.uniform(4, 14), size=(h, w, 1)).astype(np.float32)
    img = base + tint + grain
    # Desaturate towards grey, so objects stand out by colour family and texture, not by accident.
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * 0.45
    for _ in range(int(rng.integers(0, 5))):
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p2 = tuple(int(v) for v in rng.integers(0, [w, h]))
        colour = tuple(float(v) for v in rng.uniform(40, 200, size=3))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    return img


def _hue_colour(rng: np.random.Generator, hue: float, spread: float = 8.0) -> np.ndarray:
    """A saturated RGB colour (float32, 0..255) near an OpenCV hue (0..180)."""
    h = (hue + rng.uniform(-spread, spread)) % 180
    hsv = np.array([[[h, rng.uniform(170, 255), rng.uniform(170, 255)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


# Textures: each takes (rng, h, w) and returns an (h, w, 3) float image covering the canvas.
def _tex_gradient(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    a, b = _hue_colour(rng, hue), _hue_colour(rng, hue)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).copy()


def _tex_checker(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    a, b = _hue_colour(rng, hue), _hue_colour(rng, hue) * 0.55
    cell = int(rng.integers(4, 9))
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // cell + xx // cell) % 2).astype(np.float32)[..., None]
    return a * (1 - mask) + b * mask


def _tex_dots(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    a, b = _hue_colour(rng, hue), np.full(3, 240.0, np.float32)
    period = int(rng.integers(5, 9))
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy % period - period / 2) ** 2 + (xx % period - period / 2) ** 2
    mask = (d < (period / 3.5) ** 2).astype(np.float32)[..., None]
    return a * (1 - mask) + b * mask


def _tex_flat(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    return np.broadcast_to(_hue_colour(rng, hue), (h, w, 3)).copy()


def _tex_stripes(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    a, b = _hue_colour(rng, hue), np.full(3, 25.0, np.float32)
    period = rng.uniform(5, 10)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    mask = (np.sin(phase * 2 * np.pi) > 0).astype(np.float32)[..., None]
    return a * (1 - mask) + b * mask


def _tex_noise(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    a = _hue_colour(rng, hue)
    return a * (0.6 + 0.4 * _smooth_noise(rng, h, w, 12, 1))


# Shapes: each draws a filled uint8 mask of an object centred at (cx, cy) with size r and rotation theta.
def _rotated(points: np.ndarray, cx: float, cy: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return (points @ rot.T + [cx, cy]).round().astype(np.int32)


def _shape_disc(mask: np.ndarray, cx: float, cy: float, r: float, theta: float) -> None:
    axes = (int(r), int(r * 0.8))
    cv2.ellipse(mask, (int(cx), int(cy)), axes, np.degrees(theta), 0, 360, 1, -1)


def _shape_square(mask: np.ndarray, cx: float, cy: float, r: float, theta: float) -> None:
    pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * r * 0.8
    cv2.fillPoly(mask, [_rotated(pts, cx, cy, theta)], 1)


def _shape_triangle(mask: np.ndarray, cx: float, cy: float, r: float, theta: float) -> None:
    ang = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) - np.pi / 2
    pts = np.stack([np.cos(ang), np.sin(ang)], axis=1) * r
    cv2.fillPoly(mask, [_rotated(pts, cx, cy, theta)], 1)


def _shape_ring(mask: np.ndarray, cx: float, cy: float, r: float, theta: float) -> None:
    cv2.circle(mask, (int(cx), int(cy)), int(r), 1, -1)
    cv2.circle(mask, (int(cx), int(cy)), int(r * 0.55), 0, -1)


def _shape_bar(mask: np.ndarray, cx: float, cy: float, r: float, theta: float) -> None:
    pts = np.array([[-1, -0.45], [1, -0.45], [1, 0.45], [-1, 0.45]], dtype=np.float64) * r
    cv2.fillPoly(mask, [_rotated(pts, cx, cy, theta)], 1)


def _shape_cross(mask: np.ndarray, cx: float, cy: float, r: float, theta: float) -> None:
    arm = 0.32
    for pts in (np.array([[-1, -arm], [1, -arm], [1, arm], [-1, arm]]),
                np.array([[-arm, -1], [arm, -1], [arm, 1], [-arm, 1]])):
        cv2.fillPoly(mask, [_rotated(pts.astype(np.float64) * r, cx, cy, theta)], 1)


@dataclass(frozen=True)
class ObjectClass:
    """How one object class looks: a shape, a texture and a hue (OpenCV 0..180)."""

    shape: Callable[[np.ndarray, float, float, float, float], None]
    texture: Callable[[np.random.Generator, int, int, float], np.ndarray]
    hue: float


OBJECTS: dict[str, ObjectClass] = {
    "disc": ObjectClass(_shape_disc, _tex_gradient, 0.0),  # red
    "square": ObjectClass(_shape_square, _tex_checker, 115.0),  # blue
    "triangle": ObjectClass(_shape_triangle, _tex_dots, 60.0),  # green
    "ring": ObjectClass(_shape_ring, _tex_flat, 25.0),  # orange/yellow
    "stripes": ObjectClass(_shape_bar, _tex_stripes, 145.0),  # purple
    "cross": ObjectClass(_shape_cross, _tex_noise, 90.0),  # cyan
}


def render_scene(seed: int, index: int, config: SceneConfig = SceneConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of the dataset with `seed`: (RGB uint8 HxWx3, label uint8 HxW with class ids / 255)."""
    rng = np.random.default_rng([seed, index])
    # The long side is always max_side, so a model served at input_size = max_side sees scenes at scale 1.
    short = int(rng.integers(config.min_side, config.max_side + 1))
    h, w = (short, config.max_side) if rng.random() < 0.5 else (config.max_side, short)
    img = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    short = min(h, w)
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        class_id = int(rng.integers(1, len(CLASSES)))
        obj = OBJECTS[CLASSES[class_id]]
        r = rng.uniform(config.min_scale, config.max_scale) * short / 2
        # Centres may sit near the edge, so objects get cut by the frame as well as by each other.
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        mask = np.zeros((h, w), np.uint8)
        obj.shape(mask, cx, cy, r, rng.uniform(0, 2 * np.pi))
        inside = mask.astype(bool)
        # Later objects are in front: they overwrite both pixels and labels.
        texture = obj.texture(rng, h, w, obj.hue) * rng.uniform(0.8, 1.1)
        img[inside] = texture[inside]
        label[inside] = class_id
    img += rng.normal(0, rng.uniform(2, 8), size=img.shape).astype(np.float32)
    if config.ignore_border > 0:
        kernel = np.ones((2 * config.ignore_border + 1,) * 2, np.uint8)
        edges = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
        label[edges] = IGNORE_INDEX
    return np.clip(img, 0, 255).round().astype(np.uint8), label


def voc_paths(root: str | Path) -> Path:
    """`root/VOCdevkit/VOC2012`: the directory the VOC loader reads."""
    return Path(root) / "VOCdevkit" / "VOC2012"


def save_label_png(label: np.ndarray, path: str | Path, palette: list[list[int]] | None = None) -> None:
    """Write class ids as a palette ('P' mode) PNG, the way VOC ships SegmentationClass."""
    pal = palette or voc_colormap(256)
    flat = [v for colour in pal for v in colour]
    flat += [0] * (768 - len(flat))
    # VOC draws the ignore band in a cream colour; keep it recognisable.
    flat[3 * IGNORE_INDEX: 3 * IGNORE_INDEX + 3] = [224, 224, 192]
    im = Image.fromarray(label, mode="P")
    im.putpalette(flat)
    im.save(path, optimize=True)


def write_dataset(root: str | Path, *, train: int, val: int, seed: int = 0,
                  config: SceneConfig = SceneConfig(), quality: int = 95) -> Path:
    """Render `train` + `val` scenes into the VOC layout under `root` (a directory, made if missing); returns the
    VOC2012 directory. NotADirectoryError, naming `root`, when it is a file."""
    if Path(root).exists() and not Path(root).is_dir():  # else mkdir's message names VOCdevkit/..., not `root`
        raise NotADirectoryError(f"{root} is a file, not a directory: the dataset is written into a directory "
                                 "(an existing one is fine)")
    voc = voc_paths(root)
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    splits = {"train": range(train), "val": range(train, train + val)}
    for split, indices in splits.items():
        names = []
        for i in indices:
            name = f"synth_{seed}_{i:06d}"
            img, label = render_scene(seed, i, config)
            Image.fromarray(img).save(voc / "JPEGImages" / f"{name}.jpg", quality=quality)
            save_label_png(label, voc / "SegmentationClass" / f"{name}.png")
            names.append(name)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return voc

