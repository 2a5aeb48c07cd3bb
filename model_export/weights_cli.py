"""`segment-export pretrained NAME`: fetch torchvision's published deeplabv3 weights and export them to ONNX."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .catalog import BASE_URL_ENV, CACHE_ENV, WEIGHT_SOURCES
from .cli import one_line_errors

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrained` subcommand."""
    p = subparsers.add_parser(
        "pretrained", help="download torchvision's published deeplabv3 / lraspp weights and export them to ONNX",
        description="Download (or reuse from the cache) torchvision's COCO-trained deeplabv3 weights with "
                    "the 21 VOC classes, check the sha256 prefix in the file name, and export the ONNX contract.",
    )
    p.add_argument("name", choices=sorted(WEIGHT_SOURCES), help="published model")
    p.add_argument("-o", "--output", type=Path, default=None, help="ONNX path (default: <name>.onnx)")
    p.add_argument("--cache-dir", default=None,
                   help=f"where downloads are kept (default: ${CACHE_ENV}, else torch's hub cache "
                        "$TORCH_HOME/hub/checkpoints, which torchvision shares)")
    p.add_argument("--base-url", default=None,
                   help=f"mirror to download from instead of download.pytorch.org (or ${BASE_URL_ENV})")
    p.add_argument("--url", default=None,
                   help="full URL of a file with the same layout; its name must follow the torchvision "
                        "'<name>-<sha256 prefix>.pth' convention")
    p.add_argument("--confidence", action="store_true", help="also output the uint8 confidence map")
    p.add_argument("--keep-aux", action="store_true",
                   help="keep the auxiliary FCN head (unused at inference; off by default)")
    p.set_defaults(func=run)


@one_line_errors(OSError)  # an unwritable --output
def run(args: argparse.Namespace) -> int:
    """Fetch, convert and export."""
    from .export import build_metadata, export_onnx  # torch and onnx: only when run, not for --help
    from .models import output_classes
    from .weights import (
        cache_dir,
        fetch,
        load_torchvision_state_dict,
        published_url,
        read_torchvision_file,
    )

    # A WeightsError (no network, a bad hash, a bad file) ends as one clear line (model_export.cli).
    url = args.url or published_url(args.name, args.base_url)
    path, digest = fetch(url, cache=args.cache_dir)
    source = WEIGHT_SOURCES[args.name]
    state = read_torchvision_file(path)  # our training checkpoints are refused: `export --weights` reads them
    model = load_torchvision_state_dict(state, source.arch, keep_aux=args.keep_aux,
                                        what=f"weights file {path.name}")
    num_classes = output_classes(model)
    # A file from --url may hold another class count than the source's: then the names are generic.
    classes = list(source.classes) if num_classes == len(source.classes) else None
    meta = build_metadata(model, num_classes=num_classes, classes=classes, input_size=source.input_size,
                          source=url, source_sha256=digest,
                          extra={"weights": "torchvision COCO_WITH_VOC_LABELS_V1"})
    out = args.output or Path(f"{args.name}.onnx")
    export_onnx(model, out, meta, confidence=args.confidence)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {url} (sha256 {digest}); "
          f"cache: {cache_dir(args.cache_dir)}")
    return 0
