"""Export deeplabv3_resnet50 (random weights) and time ONNX Runtime against PyTorch eager, interleaved.

Usage: python -m bench.export_bench [--size 513] [--threads 2] [--reps 10] [--out docs/EXPORT_BENCH.md]
Reports export time, file size and the ORT/eager latency ratio (medians of interleaved runs, one process).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model_export.architectures import build_model
from model_export.export import build_metadata, export_onnx
from model_export.wrapper import ExportWrapper


def main() -> None:
    """Run the benchmark and write a markdown table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="deeplabv3_resnet50")
    ap.add_argument("--size", type=int, default=513)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("docs/EXPORT_BENCH.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=21).eval()
    wrapper = ExportWrapper(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "m.onnx", build_metadata(model, num_classes=21, source="bench"))
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        image = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8)
        tensor = torch.from_numpy(image)
        sess.run(None, {"image": image})  # warm-up
        with torch.inference_mode():
            wrapper(tensor)
        ort_ms, eager_ms = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            sess.run(None, {"image": image})
            ort_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            with torch.inference_mode():
                wrapper(tensor)
            eager_ms.append((time.perf_counter() - t) * 1e3)
    ratios = [e / o for e, o in zip(eager_ms, ort_ms, strict=True)]
    o, e = statistics.median(ort_ms), statistics.median(eager_ms)
    lines = [
        f"# Export benchmark: {args.arch}",
        "",
        f"Command: `python -m bench.export_bench --arch {args.arch} --size {args.size} --threads {args.threads} "
        f"--reps {args.reps}`",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, {args.threads} threads, random weights, batch 1.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| export time | {export_s:.1f} s |",
        f"| ONNX file size | {size_mb:.1f} MB |",
        f"| ORT FP32 median latency {args.size}x{args.size} | {o:.0f} ms |",
        f"| PyTorch eager median latency | {e:.0f} ms |",
        f"| eager / ORT (median of paired ratios) | {statistics.median(ratios):.2f}x |",
        "",
        "Runs are interleaved (ORT, eager, ORT, ...) in one process so machine drift hits both alike; "
        "quote the ratio, not the absolute times.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
