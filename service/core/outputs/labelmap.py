"""A label map at the upload's size, kept as the model's map plus the nearest-neighbour index of every row/column.

Masks are answered at the original resolution, but that map is only the model's (smaller) map with rows and
columns repeated: `cv2.resize(..., INTER_NEAREST_EXACT)` sends output row y to source row `rows[y]` and output
column x to source column `cols[x]`, both non-decreasing. So the outputs work on the small map and the two
index vectors and get exactly the numbers the full map would give, at a fraction of the cost:

- pixel counts: every source pixel stands for `row_weight[i] * col_weight[j]` output pixels;
- bounding boxes: a source row/column covers a contiguous block of output rows/columns;
- the PNG: output rows that repeat their predecessor are a run of zeros after PNG's "Up" filter.

`full` still materialises the map (the colour PNG and the overlay need every pixel), with the same resize
`unletterbox` uses, so it is byte-identical to what came before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from service.core.letterbox import LetterboxInfo, resize_nearest


def nearest_index(src: int, dst: int) -> np.ndarray:
    """The source index of each of `dst` output positions under `cv2.INTER_NEAREST_EXACT` (src → dst).

    Asked of OpenCV itself (a ramp resized the same way), so it can never drift from `resize_nearest`.
    """
    if src == dst:
        return np.arange(dst, dtype=np.intp)
    ramp = np.arange(src, dtype=np.float32)[None, :]  # float32 holds every index below 2**24 exactly
    return cv2.resize(ramp, (dst, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0].astype(np.intp)


@dataclass(frozen=True, eq=False)
class LabelMap:
    """`small` (2-D uint8) seen at size len(rows) x len(cols) through nearest-neighbour index maps."""

    small: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    _full: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_array(cls, labels: np.ndarray) -> LabelMap:
        """A map that already is at its final size (identity index maps)."""
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
        h, w = labels.shape
        return cls(labels, np.arange(h, dtype=np.intp), np.arange(w, dtype=np.intp), labels)

    @classmethod
    def from_model(cls, labels: np.ndarray, info: LetterboxInfo) -> LabelMap:
        """The model's letterboxed output seen at the upload's size (what `unletterbox` would make)."""
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
        valid = labels[info.top : info.top + info.new_h, info.left : info.left + info.new_w]
        if valid.shape != (info.new_h, info.new_w):
            raise ValueError(f"map {labels.shape} is smaller than the letterboxed region {info}")
        # A copy: never keep the whole batch output alive through a view.
        return cls(valid.copy(), nearest_index(info.new_h, info.orig_h), nearest_index(info.new_w, info.orig_w))

    def compact(self) -> LabelMap:
        """The cheaper form to keep: this map, or the full-size one when the upload is smaller than the model's
        view of it (a 200x150 photo seen by a 768 model: 30 KB instead of 440 KB in the results cache)."""
        height, width = self.shape
        if height * width >= self.small.size:
            return self
        return LabelMap.from_array(self.full)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    @property
    def nbytes(self) -> int:
        return int(self.small.nbytes + self.rows.nbytes + self.cols.nbytes)

    @property
    def identity(self) -> bool:
        return self.small.shape == self.shape

    @cached_property
    def full(self) -> np.ndarray:
        """The map at its final size, as `unletterbox` makes it."""
        if self._full is not None:
            return self._full
        h, w = self.shape
        return resize_nearest(self.small, w, h)

    @cached_property
    def used_lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The source rows/columns that appear in the output: (their map, their weights (how many output
        rows/columns each one becomes), their first output row/column)."""
        row_w = np.bincount(self.rows, minlength=self.small.shape[0])
        col_w = np.bincount(self.cols, minlength=self.small.shape[1])
        used_r, used_c = np.flatnonzero(row_w), np.flatnonzero(col_w)
        small = self.small
        if len(used_r) < small.shape[0] or len(used_c) < small.shape[1]:  # shrinking drops some source lines
            small = np.ascontiguousarray(small[np.ix_(used_r, used_c)])
        row_w, col_w = row_w[used_r], col_w[used_c]
        row_0 = np.concatenate(([0], np.cumsum(row_w)[:-1]))
        col_0 = np.concatenate(([0], np.cumsum(col_w)[:-1]))
        return small, row_w, col_w, row_0, col_0

    @property
    def max_id(self) -> int:
        """The largest class id present at the final size."""
        return int((self.small if self.identity else self.used_lines[0]).max())

    @cached_property
    def counts(self) -> np.ndarray:
        """Pixel count (int64) of every id 0..255 at the final size, exact."""
        if self.identity:
            return _histogram(self.small)
        small, row_w, col_w, *_ = self.used_lines
        # Group by weight: a scale factor gives at most two distinct row and two column weights, so a few
        # C histograms of column/row subsets replace one weighted bincount over every pixel.
        counts = np.zeros(256, dtype=np.int64)
        for rw in np.unique(row_w):
            rsel = small[row_w == rw]
            for cw in np.unique(col_w):
                counts += int(rw * cw) * _histogram(rsel[:, col_w == cw])
        return counts

    def bbox(self, class_id: int) -> list[int]:
        """[x0, y0, x1, y1) of `class_id` at the final size (x1, y1 exclusive); the class must be present."""
        if self.identity:
            x, y, w, h = cv2.boundingRect((self.small == class_id).view(np.uint8))
            return [x, y, x + w, y + h]
        small, row_w, col_w, row_0, col_0 = self.used_lines
        x, y, w, h = cv2.boundingRect((small == class_id).view(np.uint8))
        return [int(col_0[x]), int(row_0[y]), int(col_0[x + w - 1] + col_w[x + w - 1]),
                int(row_0[y + h - 1] + row_w[y + h - 1])]

    def wide_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(source rows widened to the final width, the source row of every output row)."""
        if self.identity:
            return self.small, self.rows
        # small[:, cols] by OpenCV's own column mapping: ~3x faster than numpy's fancy indexing along axis 1
        wide = cv2.resize(self.small, (len(self.cols), self.small.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        return wide, self.rows


def as_label_map(labels: np.ndarray | LabelMap) -> LabelMap:
    """Accept either a plain final-size map or a LabelMap."""
    return labels if isinstance(labels, LabelMap) else LabelMap.from_array(labels)


def _histogram(values: np.ndarray) -> np.ndarray:
    # calcHist counts in float32, exact below 2**24 pixels; bincount is exact at any size (and slower).
    if values.size == 0:
        return np.zeros(256, dtype=np.int64)
    if values.size < 1 << 24:
        hist = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [256], [0, 256])
        return hist.ravel().astype(np.int64)
    return np.bincount(values.ravel(), minlength=256)
