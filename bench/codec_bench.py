"""Decoder before/after in one process: an older checkout's `service.imaging` against this tree's, interleaved.

For JPEG uploads of two sizes, thread CPU-ms of `decode_image_for_model` (what every output but the overlay
uses; letterbox 320) and of `decode_image` (full size, what the overlay uses), medians of paired rounds, and
whether the two give the same pixels.

Usage:
    git archive <old-commit> | tar -x -C /tmp/before
    python -m bench.codec_bench --before /tmp/before [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from bench.harness import machine_note
from bench.markdown import write_section
from service.core import decode as imaging
from testkit import REPO
from testkit.images import encode
from testkit.photos import photo

SIZES = ((1024, 768), (4032, 3024))
LETTERBOX = 320


def load_old_imaging(checkout: Path) -> ModuleType:
    """The older checkout's `service/imaging.py` as a separate module (it imports only stable helpers)."""
    spec = importlib.util.spec_from_file_location("old_imaging", checkout / "service" / "imaging.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_imaging"] = module
    spec.loader.exec_module(module)
    return module


def paired(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """Median thread CPU-ms per call of each function, measured round-robin."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.thread_time()
            for _ in range(reps):
                fn()
            times[name].append((time.thread_time() - start) / reps * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    """Measure and write the table into the benchmarks page."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = ap.parse_args()
    old = load_old_imaging(args.before.resolve())
    rows = []
    for w, h in SIZES:
        data = encode(photo("astronaut.png", size=(w, h)), "JPEG", 90)
        reps = max(2, 40 * 1024 * 768 // (w * h))
        calls = (("reduced (model input)", lambda m, d=data: m.decode_image_for_model(d, 10**9, LETTERBOX)[0]),
                 ("full size (overlay)", lambda m, d=data: m.decode_image(d, 10**9)))
        for label, call in calls:
            ms = paired({"before": lambda c=call: c(old), "after": lambda c=call: c(imaging)}, args.rounds, reps)
            same = np.array_equal(call(old), call(imaging))
            rows.append(f"| {w}x{h} JPEG, {len(data) // 1024} KB | {label} | {ms['before']:.2f} | "
                        f"{ms['after']:.2f} | {ms['before'] / ms['after']:.2f}x | {'yes' if same else 'no'} |")
    section = "\n".join([
        "### JPEG decode before / after (thread CPU-ms, same process, interleaved)",
        "",
        f"Command: `python -m bench.codec_bench --before <checkout of the older commit>`. Medians of "
        f"{args.rounds} paired rounds; letterbox {LETTERBOX}; {machine_note()}.",
        "",
        "| upload | decode | before (Pillow) | after (libjpeg-turbo via simplejpeg) | speed-up | same pixels |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    write_section(args.out, "codec", section)
    print(section)


if __name__ == "__main__":
    main()
