"""Before/after for the largest non-model cost per request: decode + letterbox of a JPEG upload.

before: full decode (`decode_image`) then letterbox, as the service did for every output;
after:  `decode_image_for_model` (libjpeg DCT-domain reduction) then letterbox, as it now does for every
        output except `overlay`.
Both run interleaved in one process on the same bytes; the table gives medians and the paired ratio.

Times are CPU-ms of this thread (steadier than wall time on a shared machine).

Usage: python -m bench.decode_bench [--size 512] [--reps 30] [--out docs/BENCHMARKS.md] [--section decode]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.markdown import write_section
from service.core.decode import decode_image, decode_image_for_model
from service.core.letterbox import letterbox
from testkit.photos import photo

UPLOADS = ((512, 512), (1024, 768), (1920, 1080), (2048, 1536), (4032, 3024))
PAD = (124, 116, 104)


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut.png", size=(width, height))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _before(data: bytes, size: int) -> np.ndarray:
    return letterbox(decode_image(data, 10**9), size, PAD)[0]


def _after(data: bytes, size: int) -> np.ndarray:
    image, orig_hw = decode_image_for_model(data, 10**9, size)
    return letterbox(image, size, PAD, orig_hw=orig_hw)[0]


def main() -> None:
    """Time both paths per upload size and write the table into the benchmarks page."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512, help="the model's letterbox size")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    ap.add_argument("--section", default="decode", help="the marked section of --out to write")
    args = ap.parse_args()
    rows = []
    for w, h in UPLOADS:
        data = _jpeg(w, h)
        _before(data, args.size), _after(data, args.size)  # warm-up
        before, after = [], []
        for _ in range(args.reps):
            for fn, acc in ((_before, before), (_after, after)):
                t = time.thread_time()
                fn(data, args.size)
                acc.append((time.thread_time() - t) * 1e3)
        ratio = statistics.median(b / a for b, a in zip(before, after, strict=True))
        diff = np.abs(_before(data, args.size).astype(int) - _after(data, args.size).astype(int)).mean()
        rows.append(f"| {w}x{h} JPEG | {statistics.median(before):.1f} | {statistics.median(after):.1f} | "
                    f"{ratio:.2f}x | {diff:.2f} |")
    section = "\n".join([
        f"### Decode + letterbox at {args.size}: full decode against the reduced decode (same run)",
        "",
        f"Command: `python -m bench.decode_bench --size {args.size} --reps {args.reps}`. Letterbox size "
        f"{args.size}; CPU-ms, medians of {args.reps} interleaved repetitions; ratio = median of paired "
        "before/after.",
        "",
        "| upload | before: full decode + letterbox (CPU-ms) | after: reduced decode + letterbox (CPU-ms) | "
        "speed-up | "
        "mean abs pixel difference of the model input (0..255) |",
        "|---|---|---|---|---|",
        *rows,
    ])
    write_section(args.out, args.section, section)
    print(section)


if __name__ == "__main__":
    main()
