"""Overload (4× measured capacity for 60 s) and soak (10,000 sequential mixed-size requests) against a real
`segment-serve` process; writes docs/bench/reliability.json, docs/bench-overload.png and docs/bench-soak.png.

Usage: python -m bench.reliability_bench [--overload-seconds 60] [--soak-requests 10000] [--skip-soak]
The quick versions of both runs are tests/reliability/test_overload.py and test_soak.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import machine_note
from bench.models import bench_model
from testkit.images import encode
from testkit.photos import PHOTOS, photo
from testkit.reliability import direct_labels, measure_capacity, mixed_bodies, overload, soak
from testkit.server import ServerProcess


def run_overload(model: Path, args: argparse.Namespace, docs: Path) -> dict[str, Any]:
    # Distinct sizes per upload, so an answer given to the wrong request cannot pass the label check.
    bodies = [encode(photo(name, (320 + 48 * i, 240 + 16 * i))) for i, name in enumerate(PHOTOS)]
    expected = direct_labels(model, bodies)
    env = {"SEGMENT_INTRA_OP_THREADS": str(args.threads), "SEGMENT_MAX_BATCH_SIZE": "8",
           "SEGMENT_MAX_QUEUE": str(args.max_queue)}
    with ServerProcess(model, **env) as server:
        server.wait_ready()
        capacity = measure_capacity(server, bodies, concurrency=8, seconds=args.capacity_seconds)
        print(f"capacity {capacity:.1f} img/s; offering {args.factor}x for {args.overload_seconds}s", flush=True)
        result = overload(server, bodies, expected, capacity, args.factor, args.overload_seconds,
                          max_inflight=args.max_inflight)
        recovered = server.wait_ready(timeout=60) is server
    out = result.as_dict()
    out.update(recovered=recovered, env=env, load=machine_note())
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([t for t, _ in result.rss_trace], [kib / 1024 for _, kib in result.rss_trace])
    ax.set(xlabel="s", ylabel="server VmRSS, MiB",
           title=f"overload: {args.factor}× capacity ({result.rate:.0f} req/s offered) for {result.seconds:.0f} s")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / "bench-overload.png", dpi=90)
    plt.close(fig)
    return out


def soak_key(args: argparse.Namespace) -> str:
    """'soak' for the default settings, 'soak-cache<bytes>' for a run with another result-cache size."""
    return "soak" if args.soak_cache_bytes is None else f"soak-cache{args.soak_cache_bytes}"


def run_soak(model: Path, args: argparse.Namespace, docs: Path) -> dict[str, Any]:
    bodies = mixed_bodies(args.soak_sizes)
    env = {"SEGMENT_INTRA_OP_THREADS": str(args.threads)}
    if args.soak_cache_bytes is not None:
        env["SEGMENT_RESULT_CACHE_BYTES"] = str(args.soak_cache_bytes)
    with ServerProcess(model, **env) as server:
        server.wait_ready()
        result = soak(server, bodies, requests=args.soak_requests, warmup=args.soak_warmup, sample_every=100,
                      outputs=("labels", "color", "overlay", "polygons", "stats"))
    out = result.as_dict()
    out.update(trace=result.trace, sizes=args.soak_sizes, load=machine_note(), env=env)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([n for n, _ in result.trace], [kib / 1024 for _, kib in result.trace])
    ax.axvline(args.soak_warmup, color="grey", linestyle="--", label="end of warm-up")
    ax.set(xlabel="requests", ylabel="server VmRSS, MiB",
           title=f"soak: {result.requests} sequential requests, {args.soak_sizes} sizes, 5 output kinds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / f"bench-{soak_key(args)}.png", dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overload-input-size", type=int, default=512)
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--capacity-seconds", type=float, default=10.0)
    ap.add_argument("--overload-seconds", type=float, default=60.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--max-inflight", type=int, default=512)
    ap.add_argument("--soak-requests", type=int, default=10_000)
    ap.add_argument("--soak-warmup", type=int, default=1_000)
    ap.add_argument("--soak-sizes", type=int, default=40)
    ap.add_argument("--soak-cache-bytes", type=int, default=None,
                    help="SEGMENT_RESULT_CACHE_BYTES for the soak (default: the service's own default)")
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--skip-soak", action="store_true")
    args = ap.parse_args(argv)
    out_json = args.docs / "bench" / "reliability.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_overload:
            # The demo architecture at the service's letterbox: the model is the bottleneck, as in production.
            model, _ = bench_model(Path(tmp) / "demo.onnx", "deeplabv3_thin", args.overload_input_size)
            result["overload"] = {**run_overload(model, args, args.docs),
                                  "model": f"deeplabv3_thin, random init, letterbox {args.overload_input_size}",
                                  "command": "python -m bench.reliability_bench " + " ".join(sys.argv[1:])}
            print(json.dumps(result["overload"], indent=1), flush=True)
        if not args.skip_soak:
            # A tiny model so that 10,000 requests take minutes: the soak is about the server, not the model.
            model, _ = bench_model(Path(tmp) / "tiny.onnx", "deeplabv3_thin", 64, num_classes=5, base_width=8,
                                   head_channels=16)
            result[soak_key(args)] = {**run_soak(model, args, args.docs),
                              "model": "deeplabv3_thin base_width=8 head_channels=16, 5 classes, letterbox 64",
                              "command": "python -m bench.reliability_bench " + " ".join(sys.argv[1:])}
            print(json.dumps({k: v for k, v in result[soak_key(args)].items() if k != "trace"}, indent=1), flush=True)
    result["elapsed_s"] = time.perf_counter() - started
    out_json.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_json} in {result['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
