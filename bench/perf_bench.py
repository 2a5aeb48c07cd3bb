"""Side-by-side throughput and latency: raw onnxruntime, PyTorch eager, the service with dynamic batching and the
service with batching off, at several concurrency levels and two input sizes, in ONE run on one machine.

Usage (from the repo root):
    python -m bench.perf_bench [--arch deeplabv3_thin] [--input-size 512] [--seconds 5] [--out docs]

- raw ORT and PyTorch eager run in this process on letterboxed uint8 tensors (no codec, no HTTP), each at its
  best batch size, measured first. At concurrency c they serve c closed-loop clients in FIFO batches of
  min(c, best batch): the ideal, zero-overhead server for that engine. Their inputs are the letterboxed tensor,
  so their numbers do not depend on the upload size.
- the service runs as two `segment-serve` processes (SEGMENT_MAX_BATCH_SIZE=8 and =1), driven by a bounded
  httpx async closed-loop client on loopback with JPEG uploads of real photos and `labels` PNG answers.
- every configuration runs `--seconds` in total, as `--rounds` slices interleaved round-robin with the other
  engines (order rotated each round), each slice at least one request per client, at most `--max-requests`.
- per-request stage times come from the service's own `segment_stage_duration_seconds` histograms, scraped
  before and after each configuration.
Results: <out>/bench/perf.json, and the tables/plots are written by bench.report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.harness import latency_summary, machine_note, stage_means_ms
from bench.models import bench_model, parse_kwargs
from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.pipeline import Pipeline
from testkit.images import encode
from testkit.load import closed_loop
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess

BATCH_SIZES = (1, 2, 4, 8)


def batch_runner_ort(session: ort.InferenceSession) -> Callable[[np.ndarray], object]:
    return lambda batch: session.run(["labels"], {"image": batch})


def batch_runner_eager(wrapper: torch.nn.Module) -> Callable[[np.ndarray], object]:
    def run(batch: np.ndarray) -> object:
        with torch.inference_mode():
            return wrapper(torch.from_numpy(batch))
    return run


def best_batch(runners: dict[str, Callable[[np.ndarray], object]], tensor: np.ndarray,
               reps: int = 2) -> dict[str, dict[str, Any]]:
    """img/s per batch size for each engine, interleaved; the best batch size of each."""
    per: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCH_SIZES} for name in runners}
    for run in runners.values():  # warm-up, every batch size once (allocations, lazy init)
        for b in BATCH_SIZES:
            run(np.repeat(tensor[None], b, axis=0))
    for _ in range(reps):
        for b in BATCH_SIZES:
            batch = np.repeat(tensor[None], b, axis=0)
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(batch)
                per[name][b].append(b / (time.perf_counter() - t0))
    out = {}
    for name, table in per.items():
        med = {b: float(np.median(v)) for b, v in table.items()}
        out[name] = {"img_per_s": med, "best": max(med, key=med.get)}
    return out


def simulate_closed_loop(run: Callable[[np.ndarray], object], tensors: list[np.ndarray], concurrency: int,
                         batch: int, seconds: float, max_requests: int) -> dict[str, float]:
    """c clients, each re-sending as soon as answered, served FIFO in batches of min(c, batch) back to back."""
    b = min(concurrency, batch)
    start = time.perf_counter()
    waiting = deque((start, i % len(tensors)) for i in range(concurrency))
    latencies: list[float] = []
    sent = concurrency
    while waiting and (time.perf_counter() - start < seconds or len(latencies) < concurrency) \
            and len(latencies) < max_requests:
        chunk = [waiting.popleft() for _ in range(min(b, len(waiting)))]
        run(np.stack([tensors[i] for _, i in chunk]))
        now = time.perf_counter()
        for t0, _ in chunk:
            latencies.append(now - t0)
            waiting.append((now, sent % len(tensors)))
            sent += 1
    return {**latency_summary(latencies, time.perf_counter() - start), "latencies": latencies,
            "wall": time.perf_counter() - start}


def merge_slices(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary over several slices of the same configuration: all latencies, summed wall time."""
    latencies = [x for p in parts for x in p["latencies"]]
    out = latency_summary(latencies, sum(p["wall"] for p in parts))
    out["slice_throughputs"] = [p["throughput"] for p in parts]
    if "stages_ms" in parts[0]:
        counts = [p["n"] for p in parts]
        stages = {k for p in parts for k in p["stages_ms"]}
        out["stages_ms"] = {k: sum(p["stages_ms"].get(k, 0) * n for p, n in zip(parts, counts, strict=True))
                            / sum(counts) for k in stages}
        out["mean_batch"] = sum(p["mean_batch"] * n for p, n in zip(parts, counts, strict=True)) / sum(counts)
    return out


def service_point(server: ServerProcess, bodies: list[bytes], concurrency: int, seconds: float,
                  max_requests: int) -> dict[str, Any]:
    before = server.metrics()
    samples, wall = asyncio.run(closed_loop(server.url, bodies, concurrency, seconds,
                                            max(max_requests, concurrency), {"output": "labels"}))
    after = server.metrics()
    bad = [s.status for s in samples if s.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} non-200 answers during a benchmark point: {sorted(set(bad))}")
    latencies = [s.latency_s for s in samples]
    summary: dict[str, Any] = {**latency_summary(latencies, wall), "latencies": latencies, "wall": wall}
    summary["stages_ms"] = stage_means_ms(before, after)
    summary["mean_batch"] = float(np.mean([s.batch_size for s in samples]))
    return summary


def stage_split(pipeline: Pipeline, bodies: dict[str, list[bytes]], reps: int = 5) -> dict[str, Any]:
    """The service's own pre/post functions timed one by one (single thread), to split the metrics' `decode`
    (= decode + letterbox) and `encode` (= resize back + PNG encode) stages."""
    from service.core import outputs
    from service.core.decode import decode_image_for_model
    from service.core.letterbox import unletterbox

    engine = pipeline.engine
    out: dict[str, Any] = {}
    for size, blobs in bodies.items():
        t = {"decode": [], "letterbox": [], "inference": [], "resize_back": [], "encode_png": []}
        for _ in range(reps):
            for data in blobs:
                t0 = time.perf_counter()
                # As the service decodes for every output but overlay (large JPEGs reduced).
                image, orig_hw = decode_image_for_model(data, pipeline.max_pixels, engine.input_size)
                t1 = time.perf_counter()
                prepared = pipeline.prepare_image(image, orig_hw)
                tensor, info = prepared.tensor, prepared.info
                t2 = time.perf_counter()
                small = engine.run(tensor[None])[0]
                t3 = time.perf_counter()
                labels = unletterbox(small, info)
                t4 = time.perf_counter()
                outputs.encode_labels_png(labels, engine.metadata.palette)
                t5 = time.perf_counter()
                for key, a, b in (("decode", t0, t1), ("letterbox", t1, t2), ("inference", t2, t3),
                                  ("resize_back", t3, t4), ("encode_png", t4, t5)):
                    t[key].append((b - a) * 1000)
        out[size] = {k: float(np.median(v)) for k, v in t.items()}
    return out


def resnet50_check(workdir: Path, size: int, threads: int, reps: int) -> dict[str, float]:
    """Full-width deeplabv3_resnet50 at batch 1: ORT vs eager, interleaved (the model the 1.3x target is about)."""
    path, wrapper = bench_model(workdir / "r50.onnx", "deeplabv3_resnet50", size)
    engine = load_engine(EngineOptions(model_path=path, intra_op_threads=threads))
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    ort_run, eager_run = batch_runner_ort(engine.session), batch_runner_eager(wrapper)
    ort_run(x), eager_run(x)
    o, e = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ort_run(x)
        o.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        eager_run(x)
        e.append(time.perf_counter() - t0)
    ratio = float(np.median(np.array(e) / np.array(o)))
    return {"size": size, "ort_ms": float(np.median(o) * 1000), "eager_ms": float(np.median(e) * 1000),
            "eager_over_ort": ratio, "reps": reps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="deeplabv3_thin")
    ap.add_argument("--arch-kwargs", default="", help="e.g. base_width=16,head_channels=64")
    ap.add_argument("--input-size", type=int, default=512, help="the model's letterbox (inference) size")
    ap.add_argument("--sizes", default="512x512,1024x768", help="upload sizes, WxH")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=6.0, help="per engine and configuration, split in rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved slices per configuration")
    ap.add_argument("--max-requests", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT, torch and the service")
    ap.add_argument("--max-batch", type=int, default=8, help="SEGMENT_MAX_BATCH_SIZE of the batching service")
    ap.add_argument("--resnet50-reps", type=int, default=3, help="0 skips the full-width resnet50 check")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    result: dict[str, Any] = {
        "command": "python -m bench.perf_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_before": machine_note(), "torch": torch.__version__,
                    "onnxruntime": ort.__version__},
        "model": {"arch": args.arch, "kwargs": parse_kwargs(args.arch_kwargs), "input_size": args.input_size,
                  "weights": "random, seed 0", "threads": args.threads},
        "points": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_path, wrapper = bench_model(Path(tmp) / "bench.onnx", args.arch, args.input_size,
                                          **parse_kwargs(args.arch_kwargs))
        result["model"]["onnx_mb"] = model_path.stat().st_size / 1e6
        engine = load_engine(EngineOptions(model_path=model_path, intra_op_threads=args.threads))
        pipeline = Pipeline(engine)  # the very session options and steps the service uses
        runners = {"ort": batch_runner_ort(engine.session), "eager": batch_runner_eager(wrapper)}
        images = {f"{w}x{h}": [photo(name, (w, h)) for name in PHOTOS] for w, h in sizes}
        bodies = {key: [encode(im) for im in ims] for key, ims in images.items()}
        tensors = [pipeline.prepare_image(im).tensor for im in images[next(iter(images))]]
        result["batch_sweep"] = best_batch(runners, tensors[0])
        print("batch sweep:", json.dumps(result["batch_sweep"]), flush=True)

        env = {"SEGMENT_INTRA_OP_THREADS": str(args.threads), "SEGMENT_LOG_LEVEL": "warning",
               "SEGMENT_MAX_QUEUE": "256"}
        with ServerProcess(model_path, SEGMENT_MAX_BATCH_SIZE=str(args.max_batch), **env) as batched, \
                ServerProcess(model_path, SEGMENT_MAX_BATCH_SIZE="1", **env) as unbatched:
            servers = {"service_batched": batched.wait_ready(), "service_unbatched": unbatched.wait_ready()}
            for server in servers.values():  # warm connections, codecs and the arena on every upload size
                for blobs in bodies.values():
                    asyncio.run(closed_loop(server.url, blobs, 2, 60, 4, {"output": "labels"}))
            for c in levels:
                # Every engine runs `--rounds` short slices, round-robin, rotating the order each round: the
                # machine is shared, and drift then hits every engine alike instead of whichever ran last.
                slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
                names = ["ort", "eager", "service_batched", "service_unbatched"]
                for rnd in range(args.rounds):
                    for name in names[rnd % 4:] + names[:rnd % 4]:
                        if name in runners:
                            best = result["batch_sweep"][name]["best"]
                            slices.setdefault((name, "*"), []).append(simulate_closed_loop(
                                runners[name], tensors, c, best, args.seconds / args.rounds, args.max_requests))
                        else:
                            for key, blobs in bodies.items():
                                slices.setdefault((name, key), []).append(service_point(
                                    servers[name], blobs, c, args.seconds / args.rounds, args.max_requests))
                for (name, key), parts in slices.items():
                    point = merge_slices(parts)
                    extra = {"batch": min(c, result["batch_sweep"][name]["best"])} if name in runners else {}
                    for size in (bodies if key == "*" else [key]):
                        result["points"].append({"engine": name, "size": size, "concurrency": c, **extra, **point})
                    print(c, name, key, {k: round(v, 1) for k, v in point.items() if isinstance(v, float)},
                          flush=True)
            result["server_memory_kib"] = {name: s.memory_kib() for name, s in servers.items()}
        result["stage_split_ms"] = stage_split(pipeline, bodies)
        if args.resnet50_reps:
            result["resnet50_check"] = resnet50_check(Path(tmp), args.input_size, args.threads, args.resnet50_reps)
    result["machine"]["load_after"] = machine_note()
    result["elapsed_s"] = time.perf_counter() - started
    out = args.out / "bench" / "perf.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} in {result['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
