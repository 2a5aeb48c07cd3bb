"""CPU of a `POST /segment` answer's codec-thread work after the model (the map back to the upload's size, the
render, the JSON), this tree against another, in-process and paired; with proof that both trees write the same
bytes.

Method: for each tree a child process (the tree first on PYTHONPATH, OpenCV's threads as the server sets them)
runs the embedded model once on 1024x768 JPEGs of the five real photos, then times `Codec._encode`'s steps as the
server runs them (`Pipeline.postprocess`, `Pipeline.render`, the JSON body) on fresh maps, `--calls` per photo,
as thread CPU time; it prints the mean per answer and a digest of every answer's bytes. Rounds alternate the
trees' order; the table gives medians over rounds and the median of the per-round after/before ratios.

Usage:
    mkdir /tmp/before && git archive <old-commit> | tar -x -C /tmp/before
    python -m bench.encode_cost_bench --before /tmp/before [--after <tree>] [--rounds 15] [--calls 60]
        [--kinds labels,stats]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testkit import REPO


def child(kinds: list[str], calls: int) -> dict[str, Any]:
    """In the tree under test: thread CPU-µs per answer of each kind, and the answers' digest."""
    import cv2

    from service.core.engine import load_engine
    from service.core.options import EngineOptions
    from service.core.output_kinds import RenderOptions, json_bytes
    from service.core.pipeline import Pipeline
    from service.settings import Settings
    from testkit.images import encode
    from testkit.photos import PHOTOS, photo

    cv2.setNumThreads(Settings().opencv_threads)
    pipeline = Pipeline(load_engine(EngineOptions(intra_op_threads=1)))
    jobs = []
    for name in PHOTOS:
        prepared = pipeline.preprocess(encode(photo(name, size=(1024, 768)), "JPEG", 90))
        jobs.append((prepared, pipeline.infer([prepared.tensor])[0]))
    header = {"id": "0" * 22, "model": pipeline.engine.name}
    out: dict[str, Any] = {}
    for kind in kinds:
        options = RenderOptions()

        def answer(prepared: Any, labels: Any, kind: str = kind, options: Any = options) -> bytes:
            label_map = pipeline.postprocess(labels, prepared)  # a fresh map: nothing cached between answers
            body, _ = pipeline.render(kind, prepared, label_map, options, header)
            return json_bytes(body) if isinstance(body, dict) else body

        digest = hashlib.sha256(b"".join(answer(p, lab) for p, lab in jobs)).hexdigest()
        start = time.thread_time_ns()
        for _ in range(calls):
            for prepared, labels in jobs:
                answer(prepared, labels)
        out[kind] = {"us": (time.thread_time_ns() - start) / (calls * len(jobs)) / 1e3, "digest": digest}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=REPO)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=60, help="answers per photo, kind and round")
    ap.add_argument("--kinds", default="labels,stats")
    args = ap.parse_args()
    trees = {"after": args.after.resolve(), "before": args.before.resolve()}
    got: dict[tuple[str, str], list[float]] = {}
    digests: dict[tuple[str, str], set[str]] = {}
    for r in range(args.rounds):
        for t in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            env = {**os.environ, "PYTHONPATH": f"{trees[t]}:{REPO}"}
            result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", args.kinds,
                                     str(args.calls)], cwd=trees[t], env=env, capture_output=True, text=True,
                                    check=True)
            for kind, value in json.loads(result.stdout.splitlines()[-1]).items():
                got.setdefault((t, kind), []).append(value["us"])
                digests.setdefault((t, kind), set()).add(value["digest"])
    kinds = args.kinds.split(",")
    same = all(digests[("after", k)] == digests[("before", k)] and len(digests[("after", k)]) == 1 for k in kinds)
    print(f"answers (5 photos per kind): {'the same bytes from both trees' if same else 'DIFFERENT'}")
    print(f"Command: `python -m bench.encode_cost_bench --before <tree> --rounds {args.rounds} --calls {args.calls} "
          f"--kinds {args.kinds}`; thread CPU-µs per answer, medians of {args.rounds} alternating rounds; "
          f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}.\n")
    print("| output | before | after | after/before (median of paired rounds) |\n|---|---|---|---|")
    for kind in kinds:
        b, a = got[("before", kind)], got[("after", kind)]
        ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
        print(f"| {kind} | {statistics.median(b):.1f} | {statistics.median(a):.1f} | {ratio:.3f} |")
    if not same:
        raise SystemExit("the trees answer different bytes")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2].split(","), int(sys.argv[3]))))
    else:
        main()
