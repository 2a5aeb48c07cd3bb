"""Per-request CPU cost of everything besides the model, per output kind, before and after (same run).

Method: a real `segment-serve` (one intra-op thread, the embedded model) answers sequential raw-body uploads of a
1024x768 JPEG; the server's CPU-seconds (utime + stime of the whole process, from /proc/<pid>/stat) over the
requests, divided by their number, minus the model's own CPU-ms per image (measured in this process on the same
letterboxed tensor), is the overhead. Many short rounds alternate between the "before" and "after" servers, so
both see the same machine load; the table gives medians over rounds, and the overhead once more scaled to the
quietest model time of the run (a shared machine stretches every CPU-ms with its neighbours' load). A stage
split (decode, resize, render, serialize, measured in-process as process CPU time with OpenCV's threads set as
the tree's server sets them; "HTTP and the rest" is what remains of the server's cost) says where the overhead
goes.

Usage:
    git archive <old-commit> | tar -x -C /tmp/before
    python -m bench.overhead_bench --before /tmp/before [--requests 50] [--rounds 8] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import machine_note
from bench.markdown import write_section
from service.settings import default_model_path
from testkit import REPO
from testkit.images import encode
from testkit.photos import photo
from testkit.procstat import cpu_seconds, thread_times
from testkit.server import ServerProcess

KINDS = ("labels", "stats", "polygons")
STAGES = ("decode", "resize", "render", "serialize")


def server_cpu_ms(server: ServerProcess, client: httpx.Client, data: bytes, kind: str,
                  n: int) -> tuple[float, float]:
    """Server CPU-ms per request over `n` sequential uploads (every answer checked to be a 200), and the same
    without its busiest thread (the inference thread: the model and little else)."""
    start, threads = cpu_seconds(server.pid), thread_times(server.pid)
    for _ in range(n):
        r = client.post("/segment", params={"output": kind}, content=data,
                        headers={"Content-Type": "image/jpeg"})
        if r.status_code != 200:
            raise RuntimeError(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
    total = (cpu_seconds(server.pid) - start) / n * 1000
    after = thread_times(server.pid)
    busiest = max((cpu - threads.get(t, ("", 0.0))[1] for t, (_, cpu) in after.items()), default=0.0) / n * 1000
    return total, total - busiest


def stage_split(checkout: Path, model: Path, upload: Path, reps: int, kinds: tuple[str, ...] = KINDS) -> dict:
    """Run bench/overhead_stages.py against `checkout`'s service package; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "overhead_stages.py"), str(model), str(upload),
                          str(reps), ",".join(kinds)], env=env, cwd=checkout, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure both trees and write the table into the benchmarks page."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, help="a checkout of the older version (omit to measure this tree only)")
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--requests", type=int, default=50, help="sequential requests per kind and round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ap.add_argument("--kinds", default=",".join(KINDS), help="output kinds (labels, stats, polygons, color, overlay)")
    ap.add_argument("--section", default="overhead", help="the marked section of --out to write")
    ap.add_argument("--title", default="Per-request CPU cost besides the model")
    args = ap.parse_args()
    kinds = tuple(args.kinds.split(","))
    trees = {"after": REPO} | ({"before": args.before.resolve()} if args.before else {})
    data = encode(photo("astronaut.png", size=(1024, 768)), "JPEG", 90)
    upload = Path(tempfile.mkdtemp()) / "upload.jpg"
    upload.write_bytes(data)
    env = {"SEGMENT_INTRA_OP_THREADS": "1"}

    server_ms: dict[str, dict[str, list[float]]] = {t: {k: [] for k in kinds} for t in trees}
    outside_ms: dict[str, dict[str, list[float]]] = {t: {k: [] for k in kinds} for t in trees}
    model_ms: dict[str, list[float]] = {t: [] for t in trees}
    stages: dict[str, dict] = {}
    servers = {t: ServerProcess(args.model.resolve(), cwd=path, **env) for t, path in trees.items()}
    try:
        for s in servers.values():
            s.wait_ready()
        clients = {t: httpx.Client(base_url=s.url, timeout=60) for t, s in servers.items()}
        for t in trees:  # warm-up: first requests pay imports, allocations, ORT's first shapes
            for kind in kinds:
                server_cpu_ms(servers[t], clients[t], data, kind, 10)
        for r in range(args.rounds):
            for t in (trees if r % 2 == 0 else reversed(list(trees))):
                split = stage_split(trees[t], args.model.resolve(), upload, max(30, args.requests), kinds)
                model_ms[t].append(split["model"])
                stages.setdefault(t, {k: {s: [] for s in STAGES} for k in kinds})
                for kind in kinds:
                    for stage, ms in split[kind].items():
                        stages[t][kind][stage].append(ms)
                    total, outside = server_cpu_ms(servers[t], clients[t], data, kind, args.requests)
                    server_ms[t][kind].append(total)
                    outside_ms[t][kind].append(outside)
                print(f"round {r} {t}: model {split['model']:.1f} ms, server "
                      + ", ".join(f"{k} {server_ms[t][k][-1]:.1f}" for k in kinds), flush=True)
        for c in clients.values():
            c.close()
    finally:
        for s in servers.values():
            s.terminate()

    med = statistics.median
    rows = []
    for kind in kinds:
        for t in trees:
            # Per round: server − model of that round. On a shared machine (here 2 hyperthreads) every CPU-ms
            # stretches with the neighbours' load, so the last column also scales each round's overhead by the
            # quietest model time seen: (server / model − 1) × min(model).
            overheads = [sv - m for sv, m in zip(server_ms[t][kind], model_ms[t], strict=True)]
            quiet = min(model_ms[t]) * med([sv / m - 1 for sv, m in zip(server_ms[t][kind], model_ms[t],
                                                                            strict=True)])
            split = {s: med(v) if v else None for s, v in stages[t][kind].items()}
            rest = med(overheads) - sum(v for v in split.values() if v is not None)
            cells = " | ".join("–" if split[s] is None else f"{split[s]:.2f}" for s in STAGES)
            rows.append(f"| {kind} | {t} | {med(server_ms[t][kind]):.1f} | {med(model_ms[t]):.1f} | "
                        f"{med(overheads):.1f} | **{quiet:.1f}** | {med(outside_ms[t][kind]):.1f} | {cells} | "
                        f"{rest:.2f} |")
    extra = "" if kinds == KINDS else f" --kinds {','.join(kinds)}"
    section = "\n".join([
        f"### {args.title} (1024x768 JPEG, CPU-ms per request)",
        "",
        f"Command: `python -m bench.overhead_bench --before <checkout of the older commit> --requests "
        f"{args.requests} --rounds {args.rounds}{extra}`. Server: one intra-op thread, the embedded model, default "
        "settings otherwise, raw `image/jpeg` bodies, sequential. Server CPU = utime + stime of the server "
        "process per request; "
        "model = the model's own CPU-ms per image; overhead = server − model. Stages are process CPU-ms "
        "measured in-process; \"server outside its inference thread\" = the server's CPU minus that of its "
        "busiest thread (the model's), same requests, same process; \"HTTP and the rest\" = overhead minus "
        "the stages (uvicorn, Starlette/FastAPI, "
        f"middleware, thread hand-offs). Medians of {args.rounds} alternating rounds; {machine_note()}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| output | version | server | model | overhead | overhead at the quietest model time | server outside its "
        "inference thread | decode + letterbox | resize back | render | JSON | HTTP and the rest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    write_section(args.out, args.section, section)
    print(section)


if __name__ == "__main__":
    main()
