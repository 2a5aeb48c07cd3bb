"""int8 ORT vs fp32 ORT vs PyTorch eager on one model (default deeplabv3_resnet50, random weights), CPU.

Usage: python -m bench.precision_bench [--size 513] [--threads 2] [--reps 10] [--calibration-dir DIR]
       [--calibration-count 8] [--out docs/PRECISION.md]
       python -m bench.precision_bench --accuracy-model service/models/default.onnx   # accuracy section instead

All three run the same contract graph on the same real photo, letterboxed as the service does: eager is the
export wrapper's torch forward (normalise, backbone, ASPP, upsample, argmax), the ORT files are its fp32 export
and the int8 variant from `model_export.quantize.make_variant`. Repetitions are interleaved (eager, fp32, int8,
eager, ...) in one process so that machine drift hits all three alike. Writes the speed section of
docs/PRECISION.md between its markers and leaves the rest of the file alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.markdown import write_section
from model_export.architectures import build_model
from model_export.calibration import decode_file, letterboxed
from model_export.export import build_metadata, export_onnx
from model_export.quantize import DEFAULT_KEEP_FLOAT, make_variant
from model_export.wrapper import ExportWrapper

# The demo model's held-out split (models/make_default.py): seed 1 was never used for training.
HELD_OUT = {"seed": 1, "scenes": 200, "ignore_border": 2}
KEEP_FLOAT_TRIALS = {"nothing": (), "tail": ("tail",), "tail + last conv": ("tail", "last_conv"),
                     "tail + last conv + first conv": ("tail", "last_conv", "first_conv")}
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def skimage_photo_dir(dest: Path) -> Path:
    """Copy scikit-image's sample photographs (real photos shipped with the package) into `dest`."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --calibration-dir, or install scikit-image for its sample photographs")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    dest.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_PHOTOS:
        shutil.copy(data / name, dest / name)
    return dest


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def accuracy(model_path: Path, out: Path, threads: int, calibration_count: int) -> None:
    """mIoU on the demo's held-out split for fp32, fp16 and int8 (each keep-float choice), agreement on photos."""
    from model_export.evaluate import evaluate_model
    from model_export.export import read_metadata
    from model_export.quantize import label_agreement
    from model_export.synthetic import SceneConfig, write_dataset

    meta = read_metadata(model_path)
    rows = ["| variant | held-out mIoU | Δ vs fp32 (points) | label agreement with fp32 on real photos | "
            "on calibration scenes |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "held_out"
        write_dataset(data, train=0, val=HELD_OUT["scenes"], seed=HELD_OUT["seed"],
                      config=SceneConfig(ignore_border=HELD_OUT["ignore_border"]))
        photos = [letterboxed(decode_file(p), meta) for p in sorted(skimage_photo_dir(tmp / "photos").iterdir())]
        base, _ = evaluate_model(model_path, data, "val", threads=threads, progress=False)
        rows.append(f"| fp32 | {100 * base.miou:.2f} | - | - | - |")
        trials = {f"int8, float: {k}": ("int8", v) for k, v in KEEP_FLOAT_TRIALS.items()}
        trials["fp16 (CPU run)"] = ("fp16", ())
        for name, (precision, keep) in trials.items():
            path = make_variant(model_path, tmp / f"{len(rows)}.onnx", precision, None, calibration_count,
                                keep_float=keep, threads=threads)
            scores, _ = evaluate_model(path, data, "val", threads=threads, progress=False)
            on_photos = label_agreement(model_path, path, photos, threads=threads)
            on_calib = float(read_metadata(path).extra.get("agreement_fp32", "nan"))
            default = " (default)" if precision == "int8" and tuple(keep) == DEFAULT_KEEP_FLOAT else ""
            rows.append(f"| {name}{default} | {100 * scores.miou:.2f} | {100 * (scores.miou - base.miou):+.2f} | "
                        f"{100 * on_photos:.2f}% | {100 * on_calib:.2f}% |")
    cmd = f"python -m bench.precision_bench --accuracy-model {model_path} --calibration-count {calibration_count}"
    text = "\n".join([
        f"## Accuracy: `{model_path.name}` ({meta.arch}, input size {meta.input_size})",
        "",
        f"Command: `{cmd}` (generated by the script).",
        f"Held-out split: {HELD_OUT['scenes']} synthetic scenes, seed {HELD_OUT['seed']}, ignore border "
        f"{HELD_OUT['ignore_border']} (models/make_default.py), scored by `model_export.evaluate` through the "
        f"service's decode/letterbox/ORT path. int8 is calibrated on {calibration_count} synthetic scenes of "
        "a separate seed. Real photos: scikit-image's five sample photographs, letterboxed.",
        "",
        *rows,
    ])
    write_section(out, "accuracy", text)
    print(text)


def main() -> None:
    """Build, export, quantise, time interleaved, and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="deeplabv3_resnet50")
    ap.add_argument("--size", type=int, default=513)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--calibration-dir", type=Path, help="default: scikit-image's sample photographs")
    ap.add_argument("--calibration-count", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("docs/PRECISION.md"))
    ap.add_argument("--keep-float", default=",".join(DEFAULT_KEEP_FLOAT),
                    help="comma list of model_export.quantize.KEEP_FLOAT_CHOICES kept in float (empty: none)")
    ap.add_argument("--accuracy-model", type=Path, help="measure accuracy of this demo-class model instead")
    args = ap.parse_args()
    if args.accuracy_model:
        accuracy(args.accuracy_model, args.out, args.threads, args.calibration_count)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    model = build_model(args.arch, num_classes=21).eval()
    wrapper = ExportWrapper(model).eval()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        calib_dir = args.calibration_dir or skimage_photo_dir(tmp / "photos")
        meta = build_metadata(model, num_classes=21, input_size=args.size, source="bench: random init")
        fp32 = export_onnx(model, tmp / "m.onnx", meta)
        t0 = time.perf_counter()
        keep_float = tuple(k for k in args.keep_float.split(",") if k)
        int8 = make_variant(fp32, tmp / "m.int8.onnx", "int8", calib_dir, args.calibration_count,
                            keep_float=keep_float, threads=args.threads)
        quant_s = time.perf_counter() - t0
        sizes = {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}
        photo = next(p for p in sorted(calib_dir.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        image = letterboxed(decode_file(photo), meta)[None]
        sessions = {"fp32": session(fp32, args.threads), "int8": session(int8, args.threads)}
        tensor = torch.from_numpy(image)

        def eager() -> np.ndarray:
            with torch.inference_mode():
                return wrapper(tensor).numpy()

        runners = {"eager": eager}
        runners.update({k: (lambda s=s: s.run(["labels"], {"image": image})[0]) for k, s in sessions.items()})
        outputs = {k: run() for k, run in runners.items()}  # warm-up, and the labels for agreement
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.reps):
            for name, run in runners.items():
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) * 1e3)
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = {k: statistics.median(e / o for e, o in zip(times["eager"], times[k], strict=True))
              for k in ("fp32", "int8")}
    agree = {k: float((outputs[k] == outputs["eager"]).mean()) for k in ("fp32", "int8")}
    int8_vs_fp32 = float((outputs["int8"] == outputs["fp32"]).mean())
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    rows = [
        "| runtime | median ms | min ms | max ms | eager / this (median of paired ratios) | file MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("eager", "PyTorch eager (export wrapper)"), ("fp32", "ORT fp32"), ("int8", "ORT int8 QDQ")):
        ratio = "1.00x" if name == "eager" else f"{paired[name]:.2f}x"
        size = f"{sizes[name]:.1f}" if name in sizes else "-"
        rows.append(f"| {label} | {med[name]:.0f} | {min(times[name]):.0f} | {max(times[name]):.0f} | "
                    f"{ratio} | {size} |")
    cmd = (f"python -m bench.precision_bench --arch {args.arch} --size {args.size} --threads {args.threads} "
           f"--reps {args.reps} --calibration-count {args.calibration_count} --keep-float '{args.keep_float}'")
    text = "\n".join([
        f"## Speed: {args.arch}, {args.size}x{args.size}, batch 1, {args.threads} threads, CPU",
        "",
        f"Command: `{cmd}` (generated by the script).",
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(a shared machine: other jobs ran alongside, so absolute times are noisy; the interleaved ratios less so).",
        f"Random weights; int8 calibrated on {args.calibration_count} real photos in {quant_s:.0f} s, "
        f"keeping `{', '.join(keep_float) or 'nothing'}` in float; "
        f"{args.reps} interleaved repetitions after a warm-up.",
        "",
        *rows,
        "",
        f"- **int8 vs eager: {paired['int8']:.2f}x** (median of paired ratios; ratio of medians "
        f"{med['eager'] / med['int8']:.2f}x). fp32 ORT vs eager: {paired['fp32']:.2f}x.",
        f"- Labels on the benchmark photo: fp32 ORT = eager on {100 * agree['fp32']:.4f}% of pixels; int8 = fp32 on "
        f"{100 * int8_vs_fp32:.2f}% (random weights: logits are nearly tied everywhere, so this says nothing "
        "about trained accuracy; see the accuracy section).",
    ])
    write_section(args.out, "speed", text)
    print(text)


if __name__ == "__main__":
    main()
