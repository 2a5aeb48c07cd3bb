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
from functools import cached_property, lru_cache

import cv2
import numpy as np

from service.core.letterbox import LetterboxInfo, resize_nearest

# Axes of more output lines than this are computed each time: an axis holds 8 bytes per output line and 32 per model
# line, so the cache (32 axes) holds at most ~3 MB.
_CACHED_AXIS_MAX = 8192


@dataclass(frozen=True, eq=False)
class Axis:
    """One axis of a nearest-neighbour map from `src` source lines to `dst` output lines, with what the outputs
    derive from it: the same for every map of that geometry, so `axis` computes it once per geometry (`from_model`
    ~25 -> ~4 µs alone, ~130 -> ~45 µs in the server, where each numpy and OpenCV call costs several times what
    it costs alone). Every array is read-only: they are shared between maps.

    `index`: the source line of each output line; `used`: the source lines that appear in the output (`dropped`:
    not all of them do, as when shrinking); `weights`, `start`: how many output lines each used source line
    becomes, and the first of them; `base`: the smaller weight; `order`: the used lines' positions, those of
    weight `base` first (`light` of them), then those weighing one more, or None when the weights are not all
    `base` or `base + 1`."""

    index: np.ndarray
    used: np.ndarray
    dropped: bool
    weights: np.ndarray
    start: np.ndarray
    base: int
    order: np.ndarray | None
    light: int

    @classmethod
    def of(cls, index: np.ndarray, src: int) -> Axis:
        """The axis that `index` (the source line of each output line, non-decreasing) describes."""
        counts = np.bincount(index, minlength=src)
        used = np.flatnonzero(counts)
        weights = counts[used]
        start = np.concatenate(([0], np.cumsum(weights)[:-1])).astype(np.intp)
        base = int(weights.min()) if len(weights) else 0
        heavy = weights != base
        order = np.argsort(heavy, kind="stable") if len(weights) and weights.max() <= base + 1 else None
        for array in (used, weights, start) if order is None else (used, weights, start, order):
            array.flags.writeable = False  # `index` is the caller's
        return cls(index, used, len(used) < src, weights, start, base, order, len(weights) - int(heavy.sum()))


def _nearest_index(src: int, dst: int) -> np.ndarray:
    if src == dst:
        return np.arange(dst, dtype=np.intp)
    ramp = np.arange(src, dtype=np.float32)[None, :]  # float32 holds every index below 2**24 exactly
    return cv2.resize(ramp, (dst, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0].astype(np.intp)


@lru_cache(maxsize=32)
def _cached_axis(src: int, dst: int) -> Axis:
    index = _nearest_index(src, dst)
    index.flags.writeable = False
    return Axis.of(index, src)


def axis(src: int, dst: int) -> Axis:
    """The `Axis` of `src` source lines resized to `dst` under `cv2.INTER_NEAREST_EXACT` (cached per geometry)."""
    return _cached_axis(src, dst) if dst <= _CACHED_AXIS_MAX else Axis.of(_nearest_index(src, dst), src)


def nearest_index(src: int, dst: int) -> np.ndarray:
    """The source index of each of `dst` output positions under `cv2.INTER_NEAREST_EXACT` (src → dst), read-only.

    Asked of OpenCV itself (a ramp resized the same way), so it can never drift from `resize_nearest`.
    """
    return axis(src, dst).index


@dataclass(frozen=True, eq=False)
class LabelMap:
    """`small` (2-D uint8) seen at size len(rows) x len(cols) through nearest-neighbour index maps."""

    small: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    _full: np.ndarray | None = field(default=None, repr=False)
    _axes: tuple[Axis, Axis] | None = field(default=None, repr=False)  # of `rows` and `cols`, when known

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
        rows, cols = axis(info.new_h, info.orig_h), axis(info.new_w, info.orig_w)
        # A copy: never keep the whole batch output alive through a view.
        return cls(valid.copy(), rows.index, cols.index, None, (rows, cols))

    def compact(self) -> LabelMap:
        """The cheaper form to keep: this map, or the full-size one when the upload is smaller than the model's
        view of it (a 200x150 photo seen by a 768 model: 30 KB instead of 440 KB in the results cache)."""
        height, width = self.shape
        if height * width >= self.small.size:
            return self
        return LabelMap.from_array(self.full)

    def __getstate__(self) -> dict[str, object]:
        """What a pickle of the map holds (the shared results cache's files): not its geometry's `Axis` arrays,
        which `axes` makes again from `rows` and `cols` if asked (they would add ~18 KB to a 1024x768 result)."""
        state = dict(self.__dict__)
        state.pop("axes", None)
        state.pop("_axes")  # unpickled, the class's default (None) stands in
        return state

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
    def axes(self) -> tuple[Axis, Axis]:
        """The row and column `Axis` (from the per-geometry cache for a map made by `from_model`)."""
        if self._axes is not None:
            return self._axes
        return Axis.of(self.rows, self.small.shape[0]), Axis.of(self.cols, self.small.shape[1])

    @cached_property
    def used_lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The source rows/columns that appear in the output: (their map, their weights (how many output
        rows/columns each one becomes), their first output row/column). The last four are read-only."""
        rows, cols = self.axes
        small = self.small
        if rows.dropped or cols.dropped:  # shrinking drops some source lines
            small = np.ascontiguousarray(small[np.ix_(rows.used, cols.used)])
        return small, rows.weights, cols.weights, rows.start, cols.start

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
        rows, cols = self.axes
        if rows.order is not None and cols.order is not None:
            # A nearest-neighbour scale gives every used line the weight `base` or `base + 1`. With the lighter
            # lines moved first (rows: a gather of whole rows; columns: of whole rows of the transposed map), the
            # pixels of each weight are one block, and four C histograms of views count them, instead of a
            # gathered copy per pair of weights (1024x768 answers of a 320 model: ~0.2 -> ~0.1 CPU-ms).
            if rows.light < len(rows.order):
                small = np.take(small, rows.order, axis=0)
            if cols.light < len(cols.order):
                small = cv2.transpose(np.take(cv2.transpose(small), cols.order, axis=0))
            counts = np.zeros(256, dtype=np.int64)
            for r0, r1, rw in ((0, rows.light, rows.base), (rows.light, len(rows.order), rows.base + 1)):
                for c0, c1, cw in ((0, cols.light, cols.base), (cols.light, len(cols.order), cols.base + 1)):
                    if r1 > r0 and c1 > c0:
                        counts += (rw * cw) * _histogram(small[r0:r1, c0:c1])
            return counts
        # Any other weights: one C histogram per pair of row and column weights. (Not `np.unique`: its first call
        # imports `numpy.ma`, 8 ms, which no answer needs.)
        counts = np.zeros(256, dtype=np.int64)
        for rw in sorted(set(row_w.tolist())):
            rsel = small[row_w == rw]
            for cw in sorted(set(col_w.tolist())):
                counts += rw * cw * _histogram(rsel[:, col_w == cw])
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
        # small[:, cols] as a gather of whole rows of the transposed map (memcpy each): ~3x faster than OpenCV's
        # nearest-neighbour resize (which maps the columns the same way, pixel by pixel), ~6x than numpy's fancy
        # indexing along axis 1 (a 320 model's map to 1024 columns: 89 / 25 / 143 µs).
        wide = cv2.transpose(np.take(cv2.transpose(self.small), self.cols, axis=0))
        return wide, self.rows


def as_label_map(labels: np.ndarray | LabelMap) -> LabelMap:
    """Accept either a plain final-size map or a LabelMap."""
    return labels if isinstance(labels, LabelMap) else LabelMap.from_array(labels)


def _histogram(values: np.ndarray) -> np.ndarray:
    # calcHist counts in float32, exact below 2**24 pixels; bincount is exact at any size (and slower).
    if values.size == 0:
        return np.zeros(256, dtype=np.int64)
    if values.size < 1 << 24:
        # A view with contiguous rows is taken as it is (OpenCV reads rows at any stride): no copy of a block.
        hist = cv2.calcHist([values if values.strides[-1] == 1 else np.ascontiguousarray(values)], [0], None,
                            [256], [0, 256])
        return hist.ravel().astype(np.int64)
    return np.bincount(values.ravel(), minlength=256)
