"""What a split's files hold that trains and scores silently wrong: label ids (a class that never appears, labels
that are mostly or all the ignore label) and images carrying an EXIF orientation.

Both `segment-export train` and `segment-export evaluate` read a dataset image as stored (model_export.data.load_image),
because VOC and every label tool draw the labels on the stored pixel grid; an EXIF orientation is therefore not
applied, and a run that meets one says so once. A common mistake is a binary mask saved 0/255: 255 is the ignore
label, so the object is never learnt and scores "absent" with mIoU 1.0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import IGNORE_INDEX, DatasetError, VOCSegmentation, check_label_ids

log = logging.getLogger(__name__)

HINT = f"{IGNORE_INDEX} is the ignore label; masks with one object class should use 0 (background) and 1"
# Above this share of ignored pixels a split is most likely labelled with 255 for a class, not for boundaries
# (VOC's 5-px boundary band is ~7 % of its pixels).
IGNORE_SHARE = 0.9
_ORIENTATION_TAG = 0x0112


@dataclass
class LabelCensus:
    """Pixel counts of every label id (0..255) over the label maps added."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    maps: int = 0

    def add(self, label: np.ndarray) -> None:
        """Count one uint8 label map (one bincount)."""
        self.counts += np.bincount(np.asarray(label, np.uint8).ravel(), minlength=256)
        self.maps += 1

    def labelled(self, num_classes: int) -> int:
        """Pixels that hold a class id (neither ignored nor past the classes)."""
        return int(self.counts[:num_classes].sum())

    def ignore_share(self) -> float:
        """The share of all pixels counted that hold the ignore label."""
        total = int(self.counts.sum())
        return int(self.counts[IGNORE_INDEX]) / total if total else 0.0

    def no_labels(self, what: str) -> DatasetError:
        """The error for a split without one labelled pixel (a loss of 0, an mIoU of NaN)."""
        return DatasetError(f"the {self.maps} label maps of {what} hold no labelled pixel (all are {IGNORE_INDEX} or "
                            f"ids the model has no class for): nothing to learn or score; {HINT}")

    def warn(self, classes: Sequence[str], what: str) -> None:
        """Log a warning for each declared class that never appears, and for a split mostly ignored."""
        absent = [f"{name!r} ({i})" for i, name in enumerate(classes) if self.counts[i] == 0]
        share = self.ignore_share()
        hint = f"; {HINT}" if self.counts[IGNORE_INDEX] else ""
        if absent:
            log.warning("class%s %s never appear%s in the %d label maps of %s%s", "es" if len(absent) > 1 else "",
                        ", ".join(absent), "" if len(absent) > 1 else "s", self.maps, what, hint)
        if share > IGNORE_SHARE:
            log.warning("%.1f %% of the label pixels of %s are %d, the ignore label: they are neither learnt nor "
                        "scored; %s", 100 * share, what, IGNORE_INDEX, HINT)


def split_census(dataset: VOCSegmentation, num_classes: int) -> LabelCensus:
    """Count the label ids of every label map of `dataset`, each checked by `check_label_ids` (a DatasetError
    naming the file, before training rather than in the middle of it). ~1.3 ms a 500x375 VOC label map."""
    census = LabelCensus()
    for i in range(len(dataset)):
        label = dataset.read_label(i)
        check_label_ids(label, num_classes, dataset.label_path(i))
        census.add(label)
    return census


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file (1 when it has none or cannot be read: a file that does not decode
    is reported, naming it, when its pixels are read)."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) else 1


def warn_exif_oriented(paths: Sequence[Path]) -> int:
    """Warn once when images in `paths` carry a non-identity EXIF orientation; returns how many do. Only the
    header is read (~0.1 ms an image)."""
    turned = [(p, o) for p in paths if (o := exif_orientation(p)) in range(2, 9)]
    if turned:
        example, orientation = turned[0]
        log.warning("%d of %d dataset images carry an EXIF orientation (e.g. %s: %d): they are read as stored, "
                    "not turned, to match their labels, which are drawn on the stored pixels", len(turned),
                    len(paths), example, orientation)
    return len(turned)
