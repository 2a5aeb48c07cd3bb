"""The service against an emulated accelerator: can its batching and pipelining keep a device busy?

A GPU's batch times are replaced by sleeps on one emulated device (`testkit.accelerator`: one batch at a time
at full speed; the sleep releases the GIL as a CUDA wait does), scaled from raw onnxruntime's H200 times for
deeplabv3_resnet101 at 513 (fp16, NHWC: 4.6 / 7.2 / 12.5 / 22.1 / 41.8 ms for 1 / 2 / 4 / 8 / 16 images) by
`--scale`, slow enough that this machine's CPUs are not the limit. Everything else is the real service:
`segment-serve`'s uvicorn and protocol, decode, letterbox, fixed-shape buckets (1-16) timed at warm-up and
planned, two batches in flight, unletterbox and PNG encode of a real label map, driven by closed-loop clients
with one connection each. So the service's img/s against the emulated raw best (16 images per 41.8 × scale
ms) and against batch 8 are the GPU targets (≥ 0.9 at concurrency ≥ 32, ≥ 0.8 at 8) with the GPU's and the
host's speed taken out: what remains is the design.

`--input-size 513` letterboxes to DeepLab's usual size instead of the embedded model's 320, so decode, letterbox,
unletterbox and PNG encode cost what they cost in front of a GPU; the server's CPU-ms per request then says how
many images per second of host work one core carries at the GPU's sizes.

`--overlap` lets batches in flight overlap on the device, as they do on a GPU (`testkit.shared_device`); without
it the device runs one batch at a time. `--against SEGMENT_X=V --rounds N` measures a second configuration in
alternation with the first, N runs each.

Usage: python -m bench.accelerator_sim [--scale 4] [--input-size 513] [--concurrency 1,8,32,64] [--seconds 8]
           [--overlap] [--against SEGMENT_FILL_WHILE_BUSY=true --rounds 2] [--gil] [--out docs/BENCHMARKS.md]
           [--section accelerator]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.gil_probe import GilSampler, ms_per_request
from bench.gpu_load import thread_group
from bench.harness import latency_summary, loop_lag_ms, machine_note
from bench.markdown import write_section
from testkit.accelerator import H200_MS, emulated_server
from testkit.images import encode
from testkit.load import closed_loop
from testkit.photos import PHOTOS, photo
from testkit.procstat import tree_cpu_seconds
from testkit.shared_device import H200_GAP_S


def measure(scale: float, concurrencies: list[int], seconds: float, overrides: dict[str, str] | None = None,
            input_size: int | None = None, overlap: bool = False, gil: bool = False) -> dict[str, Any]:
    """Start the emulated server (the GPU defaults, then `overrides`, letterboxing to `input_size`) and drive it
    at each concurrency; img/s, latency, mean batch and the server's CPU-ms per request per point, and with
    `gil` the GIL's ms per request (py-spy)."""
    bodies = [encode(photo(name, size=(1024, 768))) for name in PHOTOS]
    out: dict[str, Any] = {"scale": scale, "device_ms": {n: ms * scale for n, ms in H200_MS.items()},
                           "env": overrides or {}, "input_size": input_size, "overlap": overlap, "points": []}
    with emulated_server(scale, input_size, overlap, **(overrides or {})) as server:
        server.wait_ready(timeout=300)
        out["readyz_input_size"] = httpx.get(f"{server.url}/readyz", timeout=30).json().get("input_size")
        for concurrency in concurrencies:
            metrics_before = httpx.get(f"{server.url}/metrics", timeout=30).text
            cpu_before = tree_cpu_seconds(server.pid)
            sampler = GilSampler(server.pid, seconds - 0.5) if gil else None
            samples, wall = asyncio.run(closed_loop(server.url, bodies, concurrency, seconds, 10**9,
                                                    params={"output": "labels"}, per_connection=True))
            cpu = tree_cpu_seconds(server.pid) - cpu_before
            ok = [s for s in samples if s.status == 200]
            if len(ok) != len(samples):
                raise RuntimeError(f"c={concurrency}: {len(samples) - len(ok)} answers were not 200")
            point = {"concurrency": concurrency, **latency_summary([s.latency_s for s in ok], wall),
                     "mean_batch": float(np.mean([s.batch_size for s in ok])),
                     "server_cpu_ms_per_request": cpu / len(ok) * 1000,
                     "loop_lag_ms": loop_lag_ms(metrics_before, httpx.get(f"{server.url}/metrics", timeout=30).text)}
            if sampler is not None:
                point["gil"] = gil_per_request(sampler.result(
                    lambda tid, name, pid=server.pid: thread_group(pid, tid, name)), point["throughput"])
            out["points"].append(point)
            print(json.dumps(point), flush=True)
    return out


def gil_per_request(result: dict[str, Any], throughput: float) -> dict[str, Any]:
    """py-spy's GIL shares (`GilSampler.result`) as ms per request at `throughput` req/s, in all and by holder."""
    if "unavailable" in result:
        return result
    return {"ms": ms_per_request(result["held"], throughput),
            "by_group": {g: ms_per_request(share, throughput) for g, share in result["by_group"].items()},
            "top_functions": result["top_functions"]}


def _cell(values: list[float], digits: int) -> str:
    """One value, or the median with the range over rounds."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def render(configs: dict[str, list[dict[str, Any]]], command: str) -> str:
    """The markdown section: a table per configuration (its runs' medians and ranges when there were several
    rounds), each point against the emulated raw best and raw batch 8."""
    first = next(iter(configs.values()))[0]
    ms = {int(n): v for n, v in first["device_ms"].items()}
    best, batch8 = 16 / ms[16] * 1000, 8 / ms[8] * 1000
    title = "The service against an emulated accelerator" + (", batches overlapping" if first.get("overlap") else "")
    lines = [f"### {title}", "",
             f"Command: `{command}`. {machine_note()}", "",
             f"Emulated device: H200 raw batch times × {first['scale']:g} "
             f"({', '.join(f'{n}: {v:.1f} ms' for n, v in sorted(ms.items()))}); raw best {best:.1f} img/s "
             f"(batch 16), raw batch 8 {batch8:.1f} img/s. Uploads: 1024×768 JPEGs → `labels` PNG, letterboxed "
             f"to {first.get('readyz_input_size', 'the model size')}. " + (
                 f"Batches in flight overlap on the device, as on a GPU (a {H200_GAP_S * first['scale'] * 1000:.1f} "
                 "ms gap per batch that other batches' compute hides; the raw figures are one batch at a time)."
                 if first.get("overlap") else "The device runs one batch at a time.")]
    gil = any("ms" in p.get("gil", {}) for runs in configs.values() for run in runs for p in run["points"])
    for label, runs in configs.items():
        rounds = f", median (range) of {len(runs)} alternating runs" if len(runs) > 1 else ""
        lines += ["", f"{label}{rounds}:", "",
                  "| concurrency | img/s | / raw best | / raw batch 8 | p50 ms | p99 ms | p99 / p50 | mean batch "
                  "| server CPU-ms per request | loop lag mean ms | loop lag p99 ms (at most) |"
                  + (" GIL ms per request | event loop | codec | one process at most, req/s |" if gil else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if gil else "")]
        for i, p in enumerate(runs[0]["points"]):
            points = [run["points"][i] for run in runs]
            cells = [_cell([q["throughput"] for q in points], 1), _cell([q["throughput"] / best for q in points], 2),
                     _cell([q["throughput"] / batch8 for q in points], 2), _cell([q["p50"] for q in points], 0),
                     _cell([q["p99"] for q in points], 0), _cell([q["p99"] / q["p50"] for q in points], 2),
                     _cell([q["mean_batch"] for q in points], 1),
                     _cell([q.get("server_cpu_ms_per_request", float("nan")) for q in points], 1),
                     _cell([q.get("loop_lag_ms", {}).get("mean", float("nan")) for q in points], 2),
                     _cell([q.get("loop_lag_ms", {}).get("p99", float("nan")) for q in points], 0)]
            if gil:
                held = [q.get("gil", {}) for q in points]
                ms = [h.get("ms", float("nan")) for h in held]
                cells += [_cell(ms, 2), _cell([h.get("by_group", {}).get("loop", 0.0) for h in held], 2),
                          _cell([h.get("by_group", {}).get("codec", 0.0) for h in held], 2),
                          _cell([1000 / m for m in ms], 0)]
            lines.append(f"| {p['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=4.0, help="emulated batch times = H200 times × this")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--seconds", type=float, default=8.0, help="per load point")
    ap.add_argument("--input-size", type=int, help="letterbox size (default: the embedded model's 320)")
    ap.add_argument("--set", action="append", default=[], metavar="SEGMENT_X=V",
                    help="a setting over the GPU defaults, repeatable")
    ap.add_argument("--against", action="append", default=[], metavar="SEGMENT_X=V",
                    help="also measure the configuration with these settings on top, in alternation, repeatable")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each configuration, alternating")
    ap.add_argument("--overlap", action="store_true",
                    help="batches in flight overlap on the device, as on a GPU (default: one at a time)")
    ap.add_argument("--gil", action="store_true", help="sample the server's GIL with py-spy at every point")
    ap.add_argument("--out", type=Path, help="write the section into this markdown file")
    ap.add_argument("--section", default="accelerator", help="the marked section of --out to write")
    ap.add_argument("--json", type=Path, help="save the raw result")
    args = ap.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    labels = {"The defaults" + "".join(f", {k}={v}" for k, v in overrides.items()): overrides}
    if args.against:
        against = dict(item.split("=", 1) for item in args.against)
        labels[", ".join(f"{k}={v}" for k, v in against.items())] = {**overrides, **against}
    configs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for _ in range(args.rounds):
        for label, env in labels.items():
            configs[label].append(measure(args.scale, [int(c) for c in args.concurrency.split(",")], args.seconds,
                                          env, args.input_size, args.overlap, args.gil))
    if args.json:
        args.json.write_text(json.dumps(configs, indent=1))
    command = " ".join(["python -m bench.accelerator_sim", *(argv if argv is not None else sys.argv[1:])])
    for flag, value in (("--out", args.out), ("--json", args.json), ("--section", args.section)):
        command = command.replace(f" {flag} {value}", "") if value else command
    section = render(configs, command)
    if args.out:
        write_section(args.out, args.section, section)
    print(section)


if __name__ == "__main__":
    main()
