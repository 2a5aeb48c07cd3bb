"""CPU and wall time of one request's codec work (decode + letterbox, resize back, render) with OpenCV's own
threads at 1 against OpenCV's default (one per CPU), same process, interleaved.

Method: the embedded model's labels for a 1024x768 JPEG computed once; then per round and per setting, `--calls`
sequential passes of preprocess -> postprocess -> render per output kind; process CPU time (`time.process_time`:
every thread, OpenCV's workers included, which a thread clock misses) and wall time per pass; medians of the
rounds, the settings alternating. Answers are checked to be the same under both.

Usage:
    python -m bench.opencv_threads_bench [--rounds 20] [--calls 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2

from bench.harness import machine_note
from service.core.output_kinds import RenderOptions
from service.core.pipeline import Pipeline
from service.settings import Settings
from service.startup import open_engine
from testkit.images import encode
from testkit.photos import photo

KINDS = ("labels", "stats", "polygons")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    data = encode(photo("astronaut.png", size=(1024, 768)), "JPEG", 90)
    pipe = Pipeline(open_engine(Settings(intra_op_threads=1)))
    (labels,) = pipe.infer([pipe.preprocess(data).tensor])
    default = cv2.getNumThreads()

    def answer(kind: str) -> object:
        prepared = pipe.preprocess(data)
        return pipe.render(kind, prepared, pipe.postprocess(labels, prepared), RenderOptions(), {})

    cpu: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    answers: dict[tuple[str, int], object] = {}
    for r in range(args.rounds):
        for threads in ((default, 1) if r % 2 == 0 else (1, default)):
            cv2.setNumThreads(threads)
            for kind in KINDS:
                answers[(kind, threads)] = answer(kind)
                p0, w0 = time.process_time(), time.perf_counter()
                for _ in range(args.calls):
                    answer(kind)
                cpu.setdefault((kind, threads), []).append((time.process_time() - p0) / args.calls * 1e3)
                wall.setdefault((kind, threads), []).append((time.perf_counter() - w0) / args.calls * 1e3)
    assert all(answers[(k, 1)] == answers[(k, default)] for k in KINDS), "answers differ"
    med = statistics.median
    print(f"Command: `python -m bench.opencv_threads_bench --rounds {args.rounds} --calls {args.calls}`; "
          f"{machine_note()}.\n")
    print("| output | OpenCV threads | process CPU-ms | wall ms |\n|---|---|---|---|")
    for kind in KINDS:
        for threads in (default, 1):
            print(f"| {kind} | {threads} | {med(cpu[(kind, threads)]):.2f} | {med(wall[(kind, threads)]):.2f} |")


if __name__ == "__main__":
    main()
