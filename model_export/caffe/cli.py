"""`segment-export convert-caffe model.caffemodel -o voc12.onnx`: DeepLab-v2 Caffe weights -> ONNX contract."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.contract import VOC_CLASSES

# DeepLab-v2 evaluates VOC at 513x513.
CAFFE_INPUT_SIZE = 513


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert-caffe` subcommand."""
    p = subparsers.add_parser(
        "convert-caffe", help="convert the DeepLab-v2 ResNet-101 .caffemodel to ONNX (no Caffe needed)",
        description="Read a DeepLab-v2 ResNet .caffemodel (e.g. train2_iter_20000.caffemodel), map its layers "
                    "onto deeplabv2_resnet101 and export the ONNX contract with Caffe's BGR mean "
                    "preprocessing baked into the graph. See docs/CAFFE.md.",
    )
    p.add_argument("caffemodel", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX path")
    p.add_argument("--classes", type=Path, default=None,
                   help="JSON list of class names (default: the 21 VOC classes for 21-class models)")
    p.add_argument("--input-size", type=int, default=CAFFE_INPUT_SIZE, help="metadata input_size (513)")
    p.add_argument("--confidence", action="store_true", help="also output the uint8 confidence map")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and export; CaffeError (a CliError) reports missing/extra layers and shape mismatches."""
    import json

    from ..export import build_metadata, export_onnx, sha256_file
    from .convert import convert_caffemodel

    model, info = convert_caffemodel(args.caffemodel)
    num_classes = info["num_classes"]
    if args.classes:
        classes = json.loads(args.classes.read_text())
    else:
        classes = list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else None
    meta = build_metadata(
        model, num_classes=num_classes, classes=classes, input_size=args.input_size,
        source=f"caffe:{args.caffemodel.name}", source_sha256=sha256_file(args.caffemodel),
        extra={"weights": "DeepLab-v2 Caffe (BGR, mean 104.008/116.669/122.675, no std)"},
    )
    export_onnx(model, args.output, meta, confidence=args.confidence)
    skipped = f", skipped {len(info['skipped'])} MSC branch layers" if info["skipped"] else ""
    print(f"wrote {args.output} from {args.caffemodel.name} ({model.arch}, layers {info['layers']}, "
          f"{num_classes} classes{skipped})")
    return 0
