"""`segment-export evaluate`'s command line: its arguments (without importing torch: `--help` is instant), and
the run, which imports `model_export.evaluate` only then."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.core.options import DEFAULT_BATCH_SIZE
from service.core.resolution import resolution_argument

from .cli import CliError
from .protocol import PROTOCOLS

DESCRIPTION = '`segment-export evaluate`: mIoU, per-class IoU and pixel accuracy over a whole VOC-layout split.'



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `segment-export evaluate`."""
    p = subparsers.add_parser("evaluate", help="mIoU / per-class IoU / pixel accuracy of a model on a split",
                              description=DESCRIPTION)
    p.add_argument("--model", required=True, help="an exported .onnx file or a training checkpoint (.pt)")
    p.add_argument("--data", required=True, help="dataset root holding VOCdevkit/VOC2012")
    p.add_argument("--split", default="val")
    p.add_argument("--labels-dir", default="SegmentationClass")
    p.add_argument("--scales", default="1", help="checkpoints only: test scales, e.g. 0.75,1,1.25")
    p.add_argument("--flip", action="store_true", help="checkpoints only: add mirrored inputs")
    p.add_argument("--fusion", choices=("mean", "max"), default="mean",
                   help="checkpoints only: average softmax over scales, or DeepLab's max over logits")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="letterbox (as served), native (DeepLab's VOC protocol: pad to the input size, never "
                        "resize) or auto (native for VOC-class models)")
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing (DeepLab-v2's parameters; "
                                                      "needs pydensecrf2)")
    p.add_argument("--input-size", type=int, help="checkpoints only: letterbox size (0 = native resolution)")
    p.add_argument("--resolution", type=resolution_argument,
                   help="ONNX files only (letterbox protocol): the long side to segment at, in pixels, or 'native', "
                        "in overlapping tiles of the model's input size, as the service's POST /segment?resolution= "
                        "does")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--threads", type=int, default=0, help="torch / onnxruntime intra-op threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Score the model and print (and optionally write) the table."""
    import torch

    from service.core.crf import CrfParams, CrfUnavailable

    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .errors import ModelExportError
    from .evaluate import evaluate_model, format_scores
    from .train_cli import parse_floats

    try:
        torch.set_num_threads(args.threads) if args.threads else None
        scores, classes = evaluate_model(
            args.model, args.data, args.split, labels_dir=args.labels_dir, scales=parse_floats(args.scales),
            flip=args.flip, fusion=args.fusion, protocol=args.protocol, crf=CrfParams() if args.crf else None,
            input_size=args.input_size, threads=args.threads, device=args.device,
            batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress,
            resolution=args.resolution,
        )
    except ModelExportError:
        raise  # `main` names the flag at fault
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError, CrfUnavailable) as exc:
        raise CliError(str(exc)) from None
    print(format_scores(scores, classes))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(scores.as_dict(classes), indent=2) + "\n")
        except OSError as exc:
            raise CliError(f"cannot write --json {args.json}: {exc.strerror or exc}") from None
    return 0
