"""`segment-export convert-caffe model.caffemodel -o voc12.onnx`: DeepLab-v2 Caffe weights -> ONNX contract,
and/or `--checkpoint init.pt`: a training checkpoint (BGR/mean preprocessing kept) for `train --init`."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.core.contract import VOC_CLASSES

from ..catalog import default_input_size
from ..cli import one_line_errors

# DeepLab-v2 evaluates VOC at 513x513: the size its architecture is listed with.
CAFFE_INPUT_SIZE = default_input_size("deeplabv2_resnet101")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert-caffe` subcommand."""
    p = subparsers.add_parser(
        "convert-caffe", help="convert the DeepLab-v2 ResNet-101 .caffemodel to ONNX (no Caffe needed)",
        description="Read a DeepLab-v2 ResNet .caffemodel (e.g. train2_iter_20000.caffemodel), map its layers "
                    "onto deeplabv2_resnet101 and export the ONNX contract with Caffe's BGR mean "
                    "preprocessing baked into the graph. See docs/CAFFE.md.",
    )
    p.add_argument("caffemodel", type=Path)
    p.add_argument("-o", "--output", type=Path, help="ONNX path")
    p.add_argument("--checkpoint", type=Path,
                   help="also (or only) write a training checkpoint for `segment-export train --init`; "
                        "an initialisation file (init.caffemodel, no ASPP) can only become one")
    p.add_argument("--num-classes", type=int, help="classes of the fresh ASPP of an initialisation file (21)")
    p.add_argument("--classes", type=Path, default=None,
                   help="JSON list of class names (default: the 21 VOC classes for 21-class models)")
    p.add_argument("--input-size", type=int, default=CAFFE_INPUT_SIZE, help="metadata input_size")
    p.add_argument("--confidence", action="store_true", help="also output the uint8 confidence map")
    p.set_defaults(func=run)


@one_line_errors(ValueError, OSError)  # a bad --input-size, an unwritable output...
def run(args: argparse.Namespace) -> int:
    """Convert and export; CaffeError (printed as one line) reports missing/extra layers and shape mismatches."""
    from ..cli import CliError, read_class_names
    from ..export import build_metadata, default_classes, export_onnx
    from ..torch_io import sha256_file
    from .convert import convert_caffemodel

    if args.output is None and args.checkpoint is None:
        raise CliError("give -o/--output (ONNX), --checkpoint (training checkpoint) or both")
    if args.input_size <= 0:  # before a checkpoint records it
        raise CliError(f"--input-size must be positive, got {args.input_size}")
    classes = read_class_names(args.classes) if args.classes else None
    model, info = convert_caffemodel(args.caffemodel, args.num_classes or (len(classes) if classes else None))
    num_classes = info["num_classes"]
    if classes is not None and len(classes) != num_classes:
        raise CliError(f"{len(classes)} class names ({args.classes}) for a model with {num_classes} classes")
    if classes is None:
        classes = list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else None
    if info["head"] is None and args.output is not None:
        raise CliError(f"{args.caffemodel.name} is an initialisation file (no ASPP head, only the pre-training "
                       f"classifier {info['pretraining_head']!r}): write a training checkpoint with --checkpoint "
                       "and fine-tune it with `segment-export train --init`")
    if args.checkpoint is not None:
        _write_checkpoint(args, model, info, classes or default_classes(num_classes), sha256_file(args.caffemodel))
        print(f"wrote training checkpoint {args.checkpoint} ({model.arch}, preprocessing caffe, "
              f"head {'from ' + info['head'] if info['head'] else 'freshly initialised'})")
    if args.output is None:
        return 0
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


def _write_checkpoint(args: argparse.Namespace, model, info: dict, classes: list[str], sha: str) -> None:  # type: ignore[no-untyped-def]
    """A `model_export.train` checkpoint at iteration 0: `train --init` starts from it, `export` exports it."""
    from service.core.contract import voc_colormap

    from ..checkpoint import save_checkpoint

    save_checkpoint(args.checkpoint, {
        "arch": model.arch, "num_classes": info["num_classes"], "model_kwargs": info["model_kwargs"],
        "preprocessing": model.preprocessing, "classes": list(classes),
        "palette": voc_colormap(info["num_classes"]), "input_size": args.input_size,
        "state_dict": model.state_dict(), "iteration": 0, "source": f"caffe:{args.caffemodel.name}",
        "source_sha256": sha, "caffe_head": info["head"], "pretraining_head": info["pretraining_head"],
        # True for a trained file: exported or evaluated as it is, it is the Caffe model. `train --init` does not
        # carry it on (model_export.checkpoint): what our trainer trains exports with half-pixel centres.
        "upsample_align_corners": model.upsample_align_corners,
    })
