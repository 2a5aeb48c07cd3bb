"""`segment-export export`: checkpoint or published weights -> contract ONNX (fp32, fp16 or int8)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import ARCH_NAMES, DEFAULT_CALIBRATION_COUNT, DEFAULT_OPSET, PRECISIONS
from .cli import CliError, one_line_errors, read_class_names

RANDOM_INIT_CLASSES = 21  # VOC's

if TYPE_CHECKING:
    from .models import SegmentationModel


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    p = sub.add_parser("export", help="export a model to the ONNX contract",
                       description="Export a model to ONNX: uint8 NHWC RGB in, uint8 labels out.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="a training checkpoint or a torchvision .pth state_dict")
    src.add_argument("--random-init", action="store_true", help="random weights (for timing and tests)")
    p.add_argument("--arch", choices=sorted(ARCH_NAMES), help="architecture (read from a checkpoint)")
    p.add_argument("--num-classes", type=int,
                   help=f"classes of a --random-init model (default {RANDOM_INIT_CLASSES}); with --weights the head "
                        "decides, and a different number is refused")
    p.add_argument("--classes", type=Path, help="JSON file with the list of class names")
    p.add_argument("--input-size", type=int, help="long side the service letterboxes to")
    p.add_argument("--confidence", action="store_true", help="add the uint8 max-softmax `confidence` output")
    p.add_argument("--msc", metavar="SCALES", help="bake multi-scale max fusion into the graph, e.g. 0.5,0.75,1 "
                                                   "(see `segment-export msc`)")
    p.add_argument("--msc-flip", action="store_true", help="with --msc: add a mirrored pass at every scale")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0])
    p.add_argument("--calibration-dir", type=Path, help="images for int8 calibration")
    p.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT)
    p.add_argument("--triton-repo", type=Path, help="also write a Triton model repository here")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> tuple[SegmentationModel, dict[str, Any], str, str]:
    """The model, what its weights file says about itself (classes, palette, input_size), source, sha256."""
    if args.random_init:
        if not args.arch:
            raise CliError("--random-init needs --arch")
        from .architectures import build_model  # torch: only when exporting, not for --help

        count = RANDOM_INIT_CLASSES if args.num_classes is None else args.num_classes
        if not 2 <= count <= 255:  # labels are uint8, and the ArgMax of one output is always 0
            why = ": a sigmoid head needs 2 classes, background and foreground" if count == 1 else ""
            raise CliError(f"--num-classes must be between 2 and 255, got {count}{why}")
        return build_model(args.arch, count), {}, "random-init", ""
    if not args.weights.is_file():
        raise CliError(f"weights file {args.weights} does not exist")
    from .torch_io import sha256_file
    from .weights import load_weights

    model, info = load_weights(args.weights, arch=args.arch)
    return model, info, f"file:{args.weights.name}", sha256_file(args.weights)


def _msc_scales(args: argparse.Namespace) -> tuple[float, ...] | None:
    if args.msc is None:
        if args.msc_flip:
            raise CliError("--msc-flip needs --msc")
        return None
    from .msc import parse_scales

    try:
        return parse_scales(args.msc)
    except ValueError as exc:
        raise CliError(f"--msc: {exc}") from None


@one_line_errors(ValueError, OSError)  # a bad --opset or --input-size, an unwritable --output...
def run(args: argparse.Namespace) -> int:
    """Export as the parsed arguments say; print a one-line JSON summary."""
    from .export import (  # onnx: only when exporting, not for --help
        build_metadata,
        check_finite,
        check_opset,
        check_outputs,
        export_onnx,
    )

    start = time.perf_counter()
    check_opset(args.opset)  # before loading the weights
    model, info, source, sha = _load(args)
    # Before the class checks, metadata, MSC or quantisation: diverged training is what went wrong.
    check_finite(model, str(args.weights) if args.weights else f"random-init {args.arch}")
    if info.get("pretraining_head"):
        raise CliError(f"{args.weights} is converted from a Caffe initialisation file: its ASPP is untrained. "
                       "Fine-tune it first (segment-export train --init)")
    from .models import output_classes

    classes = read_class_names(args.classes) if args.classes else info.get("classes")
    num_classes = output_classes(model)  # what the head predicts: the names must match it, not a default of 21
    check_outputs(num_classes, f"{args.weights}'s {model.arch} head")
    if args.weights and args.num_classes is not None and args.num_classes != num_classes:
        raise CliError(f"--num-classes {args.num_classes}, but {args.weights} predicts {num_classes} classes")
    if classes and len(classes) != num_classes:
        raise CliError(f"{len(classes)} class names ({args.classes or args.weights}) for a model that predicts "
                       f"{num_classes} classes: label ids would have no name or colour")
    # A training checkpoint knows the size it was trained at and its palette; flags override.
    meta = build_metadata(model, num_classes=num_classes, classes=classes,
                          palette=None if args.classes else info.get("palette"),
                          input_size=args.input_size if args.input_size is not None else info.get("input_size"),
                          source=source, source_sha256=sha)
    scales = _msc_scales(args)
    if args.precision == "fp32" and scales is None:
        path = export_onnx(model, args.output, meta, confidence=args.confidence, opset=args.opset)
    else:
        from .msc import bake_msc
        from .quantize import make_variant

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", meta, confidence=args.confidence,
                               opset=args.opset)
            if scales is not None:
                fp32 = bake_msc(fp32, args.output if args.precision == "fp32" else Path(tmp) / "msc.onnx",
                                scales, args.msc_flip)
            path = fp32 if args.precision == "fp32" else make_variant(
                fp32, args.output, args.precision, calibration_dir=args.calibration_dir,
                calibration_count=args.calibration_count)
    if args.triton_repo:
        from .triton import write_triton_repository

        write_triton_repository(path, args.triton_repo)
    print(json.dumps({"output": str(path), "precision": args.precision, "arch": meta.arch,
                      "size_mb": round(path.stat().st_size / 1e6, 2),
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0
