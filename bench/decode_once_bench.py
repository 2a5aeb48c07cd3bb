"""The structure checks and header read once per upload, in-process and paired: the codec's decode as it was (the
pool choice opened the upload to read its size, then the decode opened the bytes again) against as it is (opened
once, the decode takes the opened upload). 1024x768 uploads of a test photo, full-resolution decodes (what an
overlay, and every non-JPEG upload, gets). Thread CPU-ms per upload, medians of the rounds and of the paired ratios.

Usage: python -m bench.decode_once_bench [--rounds 9] [--out docs]
"""

from __future__ import annotations

import argparse
import io
import statistics
from pathlib import Path

from PIL import Image

from bench.harness import machine_note, thread_cpu_ms
from bench.markdown import write_section
from service.core.decode import decode_image, open_upload
from testkit.photos import photo

MAX_PIXELS = 40_000_000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="write the table into OUT/BENCHMARKS.md")
    args = ap.parse_args(argv)
    image = Image.fromarray(photo("astronaut.png", size=(1024, 768)))
    rows = []
    for fmt, options in (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 90})):
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        data = buf.getvalue()

        def twice(data: bytes = data) -> object:
            open_upload(data, MAX_PIXELS).close()  # the pool choice's own look at the header
            return decode_image(data, MAX_PIXELS)

        def once(data: bytes = data) -> object:
            return decode_image(open_upload(data, MAX_PIXELS), MAX_PIXELS)

        before, after = [], []
        for _ in range(args.rounds):
            before.append(thread_cpu_ms(twice, args.reps))
            after.append(thread_cpu_ms(once, args.reps))
        ratio = statistics.median(a / b for a, b in zip(after, before, strict=True))
        saved_us = statistics.median(b - a for a, b in zip(after, before, strict=True)) * 1000
        rows.append(f"| {fmt.lower()} ({len(data) // 1024} KB) | {statistics.median(before):.2f} | "
                    f"{statistics.median(after):.2f} | {saved_us:.0f} | {ratio:.3f} |")
    text = "\n".join([
        "### The upload opened once (1024x768, full-resolution decode, thread CPU-ms per upload)",
        "",
        f"Command: `python -m bench.decode_once_bench --rounds {args.rounds} --reps {args.reps}`. In-process, "
        f"paired rounds; {machine_note()}.",
        "",
        "| upload | opened twice (before) | opened once (after) | saved µs (median of pairs) | after / before |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if args.out is not None:
        write_section(args.out / "BENCHMARKS.md", "decode-once", text)


if __name__ == "__main__":
    main()
