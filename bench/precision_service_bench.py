"""Service throughput with the int8 variant against the fp32 model, in one run.

Exports `--arch` (random weights, BN statistics calibrated on photos so the net is not degenerate) at
`--input-size`, quantises it with `segment-export`'s own `make_variant` (calibrated on real photographs), starts
one `segment-serve` per precision and drives both with the same bounded closed loop, alternating slices.

Usage: python -m bench.precision_service_bench [--arch deeplabv3_resnet50] [--input-size 256] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.harness import latency_summary, machine_note
from bench.markdown import write_section
from model_export.architectures import build_model
from model_export.export import build_metadata, export_onnx
from model_export.quantize import make_variant
from model_export.wrapper import Normalize
from testkit.images import encode
from testkit.load import closed_loop
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess


def _export_fp32(arch: str, input_size: int, out: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=21)
    for m in model.modules():  # real BN statistics: a random net with default stats predicts one class
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    images = np.stack([photo(name, size=(input_size, input_size)) for name in PHOTOS])
    model.train()
    with torch.no_grad():
        model(Normalize(model.preprocessing)(torch.from_numpy(images).permute(0, 3, 1, 2).float()))
    model.eval()
    meta = build_metadata(model, num_classes=21, input_size=input_size, source="bench: random, BN on photos")
    return export_onnx(model, out, meta)


def main() -> None:
    """Measure and write the table into docs/PRECISION.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="deeplabv3_resnet50")
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0, help="per precision, split in --rounds slices")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/PRECISION.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        calib = tmp_path / "calib"
        calib.mkdir()
        for i, name in enumerate(PHOTOS):  # 5 photos x 4 crops/flips = 20 calibration images
            image = photo(name)
            h, w = image.shape[:2]
            for j, view in enumerate((image, image[:, ::-1], image[: h // 2 + h // 4], image[:, w // 4:])):
                (calib / f"{i}_{j}.jpg").write_bytes(encode(np.ascontiguousarray(view)))
        fp32 = _export_fp32(args.arch, args.input_size, tmp_path / "model.onnx")
        int8 = make_variant(fp32, tmp_path / "model.int8.onnx", "int8", calibration_dir=calib,
                            calibration_count=20)
        bodies = [encode(photo(name, size=(640, 480))) for name in PHOTOS]
        env = {"SEGMENT_INTRA_OP_THREADS": str(args.threads), "SEGMENT_MAX_QUEUE": "256"}
        results: dict[str, list] = {"fp32": [[], 0.0], "int8": [[], 0.0]}
        servers = {"fp32": ServerProcess(fp32, **env), "int8": ServerProcess(int8, **env)}
        try:
            for server in servers.values():
                server.wait_ready()
            for r in range(args.rounds):
                order = ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")
                for name in order:
                    samples, wall = asyncio.run(closed_loop(servers[name].url, bodies, args.concurrency,
                                                            args.seconds / args.rounds, 10_000))
                    assert all(s.status == 200 for s in samples), {s.status for s in samples}
                    results[name][0].extend(s.latency_s for s in samples)
                    results[name][1] += wall
        finally:
            for server in servers.values():
                server.terminate()
    summary = {name: latency_summary(lat, wall) for name, (lat, wall) in results.items()}
    ratio = summary["int8"]["throughput"] / summary["fp32"]["throughput"]
    rows = [f"| {name} | {s['throughput']:.2f} | {s['p50']:.0f} / {s['p95']:.0f} / {s['p99']:.0f} | {s['n']} |"
            for name, s in summary.items()]
    section = "\n".join([
        "## Service throughput, int8 vs fp32 (same run)",
        "",
        f"Command: `python -m bench.precision_service_bench --arch {args.arch} --input-size {args.input_size} "
        f"--concurrency {args.concurrency} --seconds {args.seconds:g}`. Two `segment-serve` processes "
        f"(CPU, {args.threads} intra-op threads, default batching) on the fp32 file and its int8 variant "
        f"(calibrated on 20 views of the scikit-image photographs), alternating {args.rounds} slices; "
        f"640x480 JPEG uploads, `output=labels`. {machine_note()}",
        "",
        "| model | images/s | latency p50 / p95 / p99 (ms) | requests |",
        "|---|---|---|---|",
        *rows,
        "",
        f"int8 / fp32 service throughput: **{ratio:.2f}x**.",
    ])
    write_section(args.out, "service-precision", section)
    print(section)


if __name__ == "__main__":
    main()
