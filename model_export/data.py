"""PASCAL VOC 2012 segmentation loader and the seed's training augmentation.

Layout: `<root>/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
ImageSets/Segmentation/<split>.txt}`; `root` may also point at `VOC2012` itself. The augmented set
(`SegmentationClassAug/*.png` with the 10,582-image `train_aug.txt`/`trainaug.txt` list) is used when
`labels_dir="SegmentationClassAug"`. Labels are palette PNGs whose *indices* are class ids; 255 is ignore.

Samples are float32 RGB tensors in 0..255 (CHW) and int64 label maps (HW). Normalisation happens later with
`model_export.wrapper.normalize_nchw`, the same function the export graph uses.

Training randomness is keyed by a global sample counter, not by a stateful generator: sample `k` of a run
always gets the same image and augmentation, so resuming at any iteration is bit-identical and data
loader workers need no shared state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from service.core.colour import cmyk_to_rgb
from service.core.icc import to_srgb

IGNORE_INDEX = 255
T = TypeVar("T")


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


def resolve_voc_dir(root: str | Path) -> Path:
    """Accept the dataset root, `.../VOCdevkit` or `.../VOC2012`; return the VOC2012 directory."""
    root = Path(root)
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DatasetError(f"no VOC layout under {root}: expected {root / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'}")


def read_split(voc_dir: Path, split: str) -> list[str]:
    """Image ids of a split list (ImageSets/Segmentation/<split>.txt); a path to a list file also works."""
    path = Path(split) if split.endswith(".txt") else voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(f"split list not found: {path}")
    # Some lists (the trainaug one) hold "/JPEGImages/x.jpg /SegmentationClassAug/x.png" pairs.
    ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"split list is empty: {path}")
    return ids


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3 in sRGB; a missing or corrupt file raises DatasetError naming it.

    An embedded ICC profile (RGB, grey or CMYK) is converted to sRGB as the service's decoder converts it, so a model
    is trained and evaluated on the colours it is served. EXIF orientation is not applied: the labels are aligned
    with the stored pixels.
    """
    try:
        with Image.open(path) as im:
            if im.mode == "CMYK":
                return np.asarray(cmyk_to_rgb(im))
            return to_srgb(np.asarray(im.convert("RGB")), im.info.get("icc_profile"), im.mode)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode image file {path}: {exc}") from None


def load_label(path: Path) -> np.ndarray:
    """Class ids uint8 HxW from a palette PNG (or a plain 8-bit greyscale PNG of ids)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"label file {path} is mode {im.mode}; expected a palette or 8-bit PNG")
            # np.asarray of a 'P' image yields the palette indices, i.e. the class ids, not the colours.
            return np.asarray(im).copy()
    except FileNotFoundError:
        raise DatasetError(f"label file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode label file {path}: {exc}") from None


class VOCSegmentation(Dataset):
    """One split of a VOC-layout dataset: `ds[i]` is (image float32 3xHxW in 0..255, label int64 HxW, id)."""

    def __init__(self, root: str | Path, split: str = "val", labels_dir: str = "SegmentationClass") -> None:
        self.voc_dir = resolve_voc_dir(root)
        self.split = split
        self.labels_dir = labels_dir
        self.ids = read_split(self.voc_dir, split)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, i: int) -> Path:
        return self.voc_dir / "JPEGImages" / f"{self.ids[i]}.jpg"

    def label_path(self, i: int) -> Path:
        return self.voc_dir / self.labels_dir / f"{self.ids[i]}.png"

    def read_label(self, i: int) -> np.ndarray:
        """Class ids uint8 HxW of sample `i`."""
        return load_label(self.label_path(i))

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw arrays: RGB uint8 HxWx3 and label uint8 HxW, checked to have the same size."""
        img, label = load_image(self.image_path(i)), load_label(self.label_path(i))
        if img.shape[:2] != label.shape:
            raise DatasetError(
                f"size mismatch: {self.image_path(i)} is {img.shape[1]}x{img.shape[0]} but "
                f"{self.label_path(i)} is {label.shape[1]}x{label.shape[0]}"
            )
        return img, label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        img, label = self.read(i)
        return (*to_tensors(img, label), self.ids[i])


def to_tensors(img: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 and HxW uint8 -> float32 3xHxW (0..255) and int64 HxW."""
    image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
    return image, torch.from_numpy(np.ascontiguousarray(label)).long()


@dataclass(frozen=True)
class Augment:
    """The seed's augmentation: random scale, mirror, pad (mean / ignore) and random crop."""

    crop_size: int = 321
    min_scale: float = 0.5
    max_scale: float = 1.5
    mirror: bool = True
    pad_rgb: tuple[float, float, float] = (123.675, 116.28, 103.53)  # normalises to zero

    def __call__(self, img: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = rng.uniform(self.min_scale, self.max_scale)
        h, w = label.shape
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = cv2.resize(img.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
        # INTER_NEAREST_EXACT samples each pixel's centre, as INTER_LINEAR does the image's; INTER_NEAREST takes
        # the top-left source pixel, which moves the labels against the image by up to half a source pixel.
        label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.mirror and rng.random() < 0.5:
            img, label = img[:, ::-1], label[:, ::-1]
        c = self.crop_size
        ph, pw = max(c - nh, 0), max(c - nw, 0)
        if ph or pw:
            img = cv2.copyMakeBorder(np.ascontiguousarray(img), 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                     value=self.pad_rgb)
            label = cv2.copyMakeBorder(np.ascontiguousarray(label), 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                       value=IGNORE_INDEX)
        y = int(rng.integers(0, label.shape[0] - c + 1))
        x = int(rng.integers(0, label.shape[1] - c + 1))
        return img[y:y + c, x:x + c], label[y:y + c, x:x + c]


def check_label_ids(label: np.ndarray, num_classes: int, path: Path) -> None:
    """DatasetError naming `path` when `label` holds an id that is neither a class (< `num_classes`) nor
    IGNORE_INDEX: cross entropy would index past the logits (an IndexError on the CPU, a device-side assert on
    CUDA), in the middle of a run. One masked max per label map."""
    largest = int(np.max(label, initial=0, where=label != IGNORE_INDEX))
    if largest >= num_classes:
        raise DatasetError(f"label file {path} holds class id {largest}, but the model has {num_classes} classes "
                           f"(ids 0..{num_classes - 1}, {IGNORE_INDEX} ignored): train with the dataset's classes")


class TrainStream(Dataset):
    """An endless, deterministic stream of augmented samples: item `k` is the k-th sample of the run.

    Epoch `e` visits the images in the order `default_rng([seed, e]).permutation(n)`; sample `k`'s
    augmentation draws from `default_rng([seed, 1, k])`. With `num_classes`, every label map read is checked to
    hold only class ids below it or the ignore label (`check_label_ids`).
    """

    def __init__(self, dataset: VOCSegmentation, augment: Augment, seed: int = 0,
                 num_classes: int | None = None) -> None:
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.num_classes = num_classes
        self._perm_epoch = -1
        self._perm = np.arange(0)

    def __len__(self) -> int:  # effectively unbounded; the sampler decides which k to read
        return 2**62

    def index_of(self, k: int) -> int:
        """Dataset index of global sample `k`."""
        n = len(self.dataset)
        epoch = k // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[k % n])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.index_of(k)
        img, label = self.dataset.read(index)
        if self.num_classes is not None:  # the augmentation adds no id but the ignore label: check the file's
            check_label_ids(label, self.num_classes, self.dataset.label_path(index))
        img, label = self.augment(img, label, np.random.default_rng([self.seed, 1, k]))
        return to_tensors(img, label)


def next_batch(batches: Iterator[T]) -> T:
    """A data loader's next batch. A DatasetError raised in a loader worker comes back with the worker's traceback
    in its message: keep the line a user reads, the original message (the traceback's last line)."""
    try:
        return next(batches)
    except DatasetError as exc:
        text = str(exc)
        if not text.startswith("Caught DatasetError"):
            raise
        raise DatasetError(text.rstrip().splitlines()[-1].split(": ", 1)[-1]) from None
