"""`segment-export`: one CLI for export, weights, training and evaluation.

Each subcommand lives in its own module, which exposes `register(subparsers)`; the module adds its parser
and sets `func` to a callable taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Module names, in help order.
SUBCOMMAND_MODULES = (
    "model_export.export_cli",
    "model_export.weights_cli",
    "model_export.train",
    "model_export.evaluate",
    "model_export.caffe.cli",
    "model_export.msc",
    "model_export.synthetic",
)


class CliError(Exception):
    """A user-facing failure: printed as one clear line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="segment-export", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `segment-export`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"segment-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
