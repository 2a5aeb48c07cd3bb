"""Padding with the pad colour, in-process and paired: numpy broadcasting the 3-value colour (what the service did)
against copying from `letterbox.pad_canvas` (what it does), for the two places a request pays it:

- the letterbox strip of a 1024x768 upload letterboxed to 513 (128 rows of 513 pixels);
- a 16-image batch bucket filled from 11 images at 513 (five padded rows, on the inference thread).

Both ways must give the same bytes. Thread CPU-ms, medians of the rounds and of the paired ratios.

Usage: python -m bench.padding_bench [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from bench.harness import machine_note, thread_cpu_ms
from service.core.buckets import fill_bucket
from service.core.letterbox import pad_canvas

PAD = (124, 116, 104)  # the ImageNet mean, DeepLab's pad colour
SIZE, CONTENT_ROWS, IMAGES, BUCKET = 513, 385, 11, 16


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    images = [np.zeros((SIZE, SIZE, 3), np.uint8)] * IMAGES

    def strip_broadcast() -> np.ndarray:
        image[CONTENT_ROWS:] = PAD
        return image

    def strip_canvas() -> np.ndarray:
        image[CONTENT_ROWS:] = pad_canvas(SIZE, SIZE, PAD)[CONTENT_ROWS:]
        return image

    def bucket_broadcast() -> np.ndarray:
        batch = np.empty((BUCKET, SIZE, SIZE, 3), np.uint8)
        for row, each in enumerate(images):
            batch[row] = each
        batch[IMAGES:] = np.asarray(PAD, np.uint8)
        return batch

    def bucket_canvas() -> np.ndarray:
        return fill_bucket(images, BUCKET, PAD)

    cases = {"letterbox strip": (strip_broadcast, strip_canvas, 200),
             f"bucket of {BUCKET} from {IMAGES}": (bucket_broadcast, bucket_canvas, 10)}
    print(f"{machine_note()}; {args.rounds} rounds; thread CPU-ms per call")
    for name, (before, after, reps) in cases.items():
        assert np.array_equal(before().copy(), after())
        times: dict[str, list[float]] = {"broadcast": [], "canvas": []}
        for _ in range(args.rounds):
            times["broadcast"].append(thread_cpu_ms(before, reps))
            times["canvas"].append(thread_cpu_ms(after, reps))
        ratio = statistics.median(b / a for b, a in zip(times["broadcast"], times["canvas"], strict=True))
        print(f"{name}: broadcast {statistics.median(times['broadcast']):.3f}, canvas "
              f"{statistics.median(times['canvas']):.3f} (paired {ratio:.0f}x)")


if __name__ == "__main__":
    main()
