"""`segment-export evaluate`'s arguments, without importing torch: `--help` is instant, and the command
imports `model_export.evaluate` only when it runs."""

from __future__ import annotations

import argparse

from .cli import run_later
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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--threads", type=int, default=0, help="torch / onnxruntime intra-op threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_later("model_export.evaluate"))
