"""The command line of `segment` (see `clients.batch`): its arguments, its help, and which of them decide what
the output files hold (`run_options`, recorded in --out)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from service.client import OUTPUTS, OVERLAY_FORMATS, PRIORITIES
from service.core.output_kinds import OUTPUT_KINDS
from service.core.resolution import resolution_argument


def run_options(args: argparse.Namespace) -> dict[str, object]:
    """What decides the content of every output file; recorded in --out so that a rerun can tell."""
    # `crf` and `resolution` only when asked for: a folder written before the flags existed holds masks without
    # them, and is resumed.
    return {"output": args.output, "format": args.format, "alpha": args.alpha, "tolerance": args.tolerance,
            "min_area": args.min_area, **({"crf": True} if args.crf else {}),
            **({"resolution": args.resolution} if args.resolution is not None else {})}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments of `segment` (argparse exits 2 on a bad one)."""
    parser = argparse.ArgumentParser(
        prog="segment", description="Segment image files through the service (--server) or in-process (--local).",
        epilog=_kinds_help() + "\n\n" + _RULES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder (layout mirrors the inputs)")
    parser.add_argument("--output", choices=OUTPUTS, default="color",
                        help="what to produce (default color; the kinds are listed below)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="URL", help="base URL of a running segment-serve")
    where.add_argument("--local", metavar="MODEL", type=Path, help="ONNX model to run in this process")
    parser.add_argument("--api-key", default=os.environ.get("SEGMENT_API_KEY"),
                        help="X-API-Key for --server (default $SEGMENT_API_KEY)")
    parser.add_argument("-j", "--jobs", type=int, default=4, help="requests in flight / worker threads")
    parser.add_argument("--alpha", type=_unit_float, default=None, help="overlay opacity 0..1")
    parser.add_argument("--format", choices=OVERLAY_FORMATS, default=None,
                        help=f"overlay format (default {OVERLAY_FORMATS[0]}); the other kinds have one each")
    parser.add_argument("--tolerance", type=_non_negative_float, default=None, help="polygon simplification, pixels")
    parser.add_argument("--min-area", type=_non_negative_float, default=None,
                        help="drop polygons smaller than this, pixels")
    parser.add_argument("--crf", action="store_true",
                        help="refine each mask with the dense CRF (the crf extra, on the server or, --local, here)")
    parser.add_argument("--resolution", type=resolution_argument, default=None, metavar="N|native",
                        help="segment each image at this long side in pixels, or native (its own), rather than the "
                             "model's input size: above it the image runs in overlapping tiles, which keeps thin and "
                             "small things a downscale loses, at a model run per tile (an image that needs more tiles "
                             "than the server runs for one is segmented at the highest resolution it gives); not with "
                             "--crf")
    parser.add_argument("--providers", default="auto", help="--local: onnxruntime providers (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="--local: onnxruntime intra-op threads")
    parser.add_argument("--priority", choices=PRIORITIES, default="bulk",
                        help="--server: the requests' priority (default bulk: the server runs interactive requests "
                             "first and keeps part of its queue for them, so a folder never crowds out live users)")
    parser.add_argument("--wait", type=float, default=30.0, help="--server: seconds to wait for it to be ready")
    parser.add_argument("--retries", type=_non_negative_int, default=2,
                        help="--server: the Python client's retries for each file: extra attempts after a 503 "
                             "(overloaded, not ready), with its backoff (default 2)")
    parser.add_argument("--max-connection-failures", type=_positive_int, default=10, metavar="K",
                        help="--server: stop the run (exit 2) after K files in a row fail to reach the server "
                             "(default 10)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo files whose output already exists, also when made with other options or model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.crf and args.resolution is not None:  # the service refuses it (422) for every tiled image
        parser.error("--crf refines at the model's input size: it cannot be combined with --resolution")
    try:  # the service refuses a format the kind is not written in (422): say so once, before any file
        OUTPUT_KINDS[args.output].encoding(args.format)
    except ValueError as exc:
        parser.error(f"--format: {exc}")
    return args


_RULES = """\
outputs:
  Names that would collide keep their extension (a.jpg, a.png: a.jpg.png, a.png.png); names that differ only in
  case collide too (A.png, a.png), as on a case-insensitive filesystem. The same relative path under two inputs
  (in1/x.jpg, in2/x.jpg), or names that still collide, stop the run before anything is written: use separate
  --out folders. So does an --out that is an input folder, or an output file that would be an input image.
  A rerun skips the files already written, unless it asks for another --output, other options or another model
  than the run recorded in --out: then it stops, and --overwrite redoes everything. A file answered by another
  model than the run's (the server's model changed during the run) is not written, and fails (model_changed).
  An overlay too large for JPEG is stored as .png. --overwrite first deletes the outputs of the files it will
  redo, so an interrupted run resumes without --overwrite. Ctrl-C stops after the files in progress, a second
  Ctrl-C at once; both print the summary and exit 130.
exit status: 0 all written, 1 some files failed, 2 cannot start, the server could not be reached
  (--max-connection-failures), its TLS certificate is not accepted or it does not speak TLS, 130 interrupted"""


def _kinds_help() -> str:
    """The output kinds for `--help`, from the service's table: name, file suffixes (default first), description."""
    rows = [(kind.name, " ".join(e.suffix for e in kind.encodings), kind.description)
            for kind in OUTPUT_KINDS.values()]
    name_width, suffix_width = (max(len(row[i]) for row in rows) for i in (0, 1))
    lines = [f"  {name:<{name_width}}  {suffix:<{suffix_width}}  {text}" for name, suffix, text in rows]
    return "output kinds (--output) and their file suffixes:\n" + "\n".join(lines)


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    """As the API bounds `tolerance` and `min_area`: refused here, before a run that every file would fail (and
    whose options, recorded in --out, a corrected rerun would then conflict with)."""
    value = float(text)
    if not value >= 0.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
