"""`segment-export synth`: write a synthetic segmentation dataset (model_export.synthetic) in the VOC layout."""

from __future__ import annotations

import argparse

from . import synthetic
from .cli import one_line_errors
from .synthetic import CLASSES, SceneConfig, write_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `segment-export synth`."""
    p = subparsers.add_parser("synth", help="write a synthetic segmentation dataset in the VOC layout",
                              description=(synthetic.__doc__ or "").splitlines()[0])
    p.add_argument("--out", required=True, help="dataset root (VOCdevkit/VOC2012 is created under it)")
    p.add_argument("--train", type=int, default=400, help="number of training scenes")
    p.add_argument("--val", type=int, default=100, help="number of validation scenes")
    p.add_argument("--seed", type=int, default=0, help="scene i depends only on (seed, i)")
    p.add_argument("--min-side", type=int, default=SceneConfig.min_side)
    p.add_argument("--max-side", type=int, default=SceneConfig.max_side)
    p.add_argument("--ignore-border", type=int, default=SceneConfig.ignore_border,
                   help="VOC-style 255 band on object edges (px)")
    p.set_defaults(func=_run)


@one_line_errors(OSError)  # an --out that is a file or lies below one, a folder it may not write...
def _run(args: argparse.Namespace) -> int:
    config = SceneConfig(min_side=args.min_side, max_side=args.max_side, ignore_border=args.ignore_border)
    voc = write_dataset(args.out, train=args.train, val=args.val, seed=args.seed, config=config)
    print(f"wrote {args.train} train + {args.val} val scenes to {voc} (classes: {', '.join(CLASSES)})")
    return 0
