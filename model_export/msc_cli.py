"""`segment-export msc`'s command line: its arguments (without importing onnx: `--help` is instant), and the run,
which imports `model_export.msc` only then."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .catalog import DEEPLAB_SCALES
from .cli import CliError


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
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Bake the multi-scale test into a copy of the file."""
    import onnx

    from .msc import bake_msc, parse_scales

    if not args.model.is_file():
        raise CliError(f"model file {args.model} does not exist")
    try:
        out = bake_msc(args.model, args.output, parse_scales(args.scales), args.flip)
    except (ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:  # OSError: the output
        raise CliError(str(exc)) from None
    print(json.dumps({"output": str(out), "scales": list(parse_scales(args.scales)), "flip": args.flip,
                      "size_mb": round(out.stat().st_size / 1e6, 2)}))
    return 0
