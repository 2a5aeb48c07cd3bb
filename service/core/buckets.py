"""Batch buckets: the fixed batch sizes a fixed-shape engine runs (Triton's preferred batch sizes).

On CUDA, cuDNN plans every convolution for the input shape it sees, and a session whose batch size changes
re-plans all of them: measured on an H100, 280-350 ms per call while the batch size alternated 1 <-> 8, against
4.7 and 23 ms with one session per size. So a batch of n images is padded up to the smallest bucket >= n and runs
on that bucket's own session, which only ever sees one shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .letterbox import pad_canvas


def default_buckets(max_batch_size: int) -> list[int]:
    """Powers of two below `max_batch_size`, then `max_batch_size` itself: 1, 2, 4, 8 for 8; 1, 2, 4, 8, 12 for 12.

    Padding to the next power of two wastes at most half of a batch, and only when the load is light
    (heavy load fills the largest bucket); few buckets keep the sessions' memory and the warm-up short.
    """
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


def normalise_buckets(requested: Sequence[int], max_batch_size: int) -> list[int]:
    """Sorted, unique bucket sizes within 1..max_batch_size, always ending at max_batch_size (the batcher cuts
    batches of that size). An empty request means `default_buckets`."""
    if not requested:
        return default_buckets(max_batch_size)
    bad = [b for b in requested if not 1 <= b <= max_batch_size]
    if bad:
        raise ValueError(f"batch buckets {bad} are outside 1..max_batch_size ({max_batch_size})")
    return sorted({*requested, max_batch_size})


def bucket_for(count: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `count` images (buckets sorted ascending; count <= the largest)."""
    for size in buckets:
        if size >= count:
            return size
    raise ValueError(f"{count} images exceed the largest bucket ({buckets[-1]})")


def fill_bucket(images: Sequence[np.ndarray], bucket: int, pad_rgb: Sequence[int]) -> np.ndarray:
    """One contiguous uint8 [bucket, H, W, 3] batch: the images, then rows of the pad colour.

    The pad colour is the model's mean, which its in-graph normalisation maps to 0, so padded rows cost compute
    but never change the real rows (convolutions and ArgMax work per image). Writing the images straight into
    the bucket-sized buffer costs one copy, the same as the `np.stack` it replaces.
    """
    first = images[0]
    batch = np.empty((bucket, *first.shape), dtype=np.uint8)
    for row, image in enumerate(images):
        batch[row] = image
    if len(images) < bucket:
        batch[len(images):] = pad_canvas(*first.shape[:2], pad_rgb)
    return batch


# Split only when it is clearly cheaper: a bucket's time comes from one warm-up run, so near-ties stay padded.
SPLIT_MARGIN = 0.95


def padding_fraction(real_rows: int, padded_rows: int) -> float:
    """The share of the rows run that was padding, rounded for `/readyz` (0 before any run)."""
    total = real_rows + padded_rows
    return round(padded_rows / total, 4) if total else 0.0


def batch_plan(costs: Mapping[int, float]) -> dict[int, int]:
    """For every count of waiting images (1 up to the largest bucket), how many to run now.

    `costs` are seconds per batch of each bucket (measured at warm-up). A batch of n pads up to its bucket, or
    takes the largest bucket below n and leaves the rest waiting (Triton's preferred batch sizes). The rest is
    costed as if it then ran alone, padded or split again, so a split never loses even when no more images
    arrive; under load the rest joins the next batch and the split gains more. With the H200's figures for
    deeplabv3_resnet101 (buckets 1-16: 4.6, 7.2, 12.5, 22.1, 41.8 ms) 11 images run as 8 now (22.1 + 11.8 ms
    for the last 3, against 41.8 ms padded to 16) while 15 pad to 16.
    """
    sizes = sorted(costs)
    take: dict[int, int] = {}
    best = {0: 0.0}  # the least time n images can take, padded or split
    for n in range(1, sizes[-1] + 1):
        padded = costs[bucket_for(n, sizes)]
        below = [size for size in sizes if size < n]
        split = costs[below[-1]] + best[n - below[-1]] if below else float("inf")
        if split < SPLIT_MARGIN * padded:
            take[n], best[n] = below[-1], split
        else:
            take[n], best[n] = n, padded
    return take
