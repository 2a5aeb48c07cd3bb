"""`segment-export msc`'s arguments, without importing onnx: `--help` is instant, and the command imports
`model_export.msc` only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .catalog import DEEPLAB_SCALES
from .cli import run_later


def register(sub: argparse._SubParsersAction) -> None:
    """Add `segment-export msc`."""
    p = sub.add_parser("msc", help="bake multi-scale max-fusion inference into an exported ONNX file",
                       description="Rewrite a contract ONNX file so that it runs DeepLab's multi-scale test "
                                   "(max over the upsampled logits of each scale); same input and outputs.")
    p.add_argument("model", type=Path, help="an ONNX file written by segment-export (fp32)")
    p.add_argument("--scales", default=",".join(str(s) for s in DEEPLAB_SCALES),
                   help="comma-separated scales (default: DeepLab's 0.5,0.75,1)")
    p.add_argument("--flip", action="store_true", help="add a mirrored pass at every scale")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=run_later("model_export.msc"))
