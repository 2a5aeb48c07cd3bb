"""Tiled inference: an image segmented at a resolution above the model's input size, in overlapping tiles.

A model trained at `input_size` sees a 4000x3000 photo shrunk to 513x385, and a pole, a wire or a road marking
narrower than 8 pixels is gone before the model runs. Segmenting at a higher resolution keeps them: the image is
letterboxed to `resolution` (its long side), cut into input-size tiles that overlap, each tile is one model input
(batched like any other image), and the tiles' labels are stitched back into one map at `resolution`.

The contract gives labels, not scores (the ArgMax is inside the graph), so overlapping tiles cannot be averaged as
mmsegmentation's `slide` mode averages logits. Each pixel is taken instead from the tile in which it lies farthest
from an edge: where two tiles overlap, the cut is at the middle of the overlap (U-Net's overlap-tile strategy), and
every pixel kept has at least half the overlap of context on each side that has a neighbour.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .letterbox import compute_letterbox

# A third of each tile is shared with its neighbour: mmsegmentation's slide configurations (512 crops, stride 341).
# Every kept pixel then has at least a sixth of a tile (85 px at 513) of context towards each neighbour.
TILE_OVERLAP = 1 / 3


def tile_starts(length: int, tile: int, overlap: float = TILE_OVERLAP) -> tuple[int, ...]:
    """Where the tiles of side `tile` start along an axis of `length` pixels: the first at 0, the last ending at
    `length`, evenly spaced and sharing at least `overlap` of a tile with each neighbour. One tile at 0 when
    `length` fits in one (the rest of that tile is the letterbox's padding)."""
    if length <= tile:
        return (0,)
    stride = max(1, math.floor(tile * (1 - overlap)))
    steps = math.ceil((length - tile) / stride)
    return tuple(round(i * (length - tile) / steps) for i in range(steps + 1))


def _cuts(starts: Sequence[int], tile: int, length: int) -> tuple[int, ...]:
    """The bounds of what each tile contributes: 0, the middle of each overlap, `length`."""
    middles = ((start + tile + following) // 2 for start, following in itertools.pairwise(starts))
    return (0, *middles, length)


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering the `height` x `width` content at the top left of a letterboxed canvas (whose side is at
    least `tile`), in row-major order."""

    tile: int
    height: int
    width: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def covering(cls, height: int, width: int, tile: int) -> TileGrid:
        """The grid of `tile`-sided tiles over content of `height` x `width` pixels."""
        return cls(tile, height, width, tile_starts(height, tile), tile_starts(width, tile))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def extent(self) -> tuple[int, int]:
        """Height and width of what the tiles cover: the content, or a tile where the content is smaller."""
        return self.rows[-1] + self.tile, self.cols[-1] + self.tile

    def split(self, canvas: np.ndarray) -> list[np.ndarray]:
        """The tiles of a letterboxed canvas (H x W x 3, at least `extent`): views, not copies; the batch copies
        each into its input once."""
        side = self.tile
        return [canvas[y : y + side, x : x + side] for y in self.rows for x in self.cols]

    def stitch(self, labels: Sequence[np.ndarray]) -> np.ndarray:
        """The tiles' label maps (each `tile` x `tile`, in `split`'s order) as one map of `extent`: the content
        from the tile in which each pixel lies farthest from an edge, 0 in the padding beyond it."""
        if len(labels) != len(self):
            raise ValueError(f"{len(labels)} label maps for {len(self)} tiles")
        out = np.zeros(self.extent, dtype=np.uint8)
        row_cuts, col_cuts = _cuts(self.rows, self.tile, self.height), _cuts(self.cols, self.tile, self.width)
        index = 0
        for i, y in enumerate(self.rows):
            top, bottom = row_cuts[i], row_cuts[i + 1]
            for j, x in enumerate(self.cols):
                left, right = col_cuts[j], col_cuts[j + 1]
                out[top:bottom, left:right] = labels[index][top - y : bottom - y, left - x : right - x]
                index += 1
        return out


def grid_at(height: int, width: int, size: int, tile: int) -> TileGrid:
    """The tiles of an image of `height` x `width` letterboxed to `size` (at least `tile`)."""
    info = compute_letterbox(height, width, size)
    return TileGrid.covering(info.new_h, info.new_w, tile)


def highest_size(height: int, width: int, tile: int, max_tiles: int, below: int) -> int:
    """The largest letterbox size under `below` at which an image of `height` x `width` runs in at most `max_tiles`
    tiles (`tile` itself at worst: one tile). The count only grows with the size, so a bisection finds it."""
    low, high = tile, below  # low fits; high does not
    while high - low > 1:
        middle = (low + high) // 2
        if len(grid_at(height, width, middle, tile)) <= max_tiles:
            low = middle
        else:
            high = middle
    return low
