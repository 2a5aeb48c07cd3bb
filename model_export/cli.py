"""`segment-export`: one CLI for export, weights, training and evaluation.

Each subcommand lives in its own module, which exposes `register(subparsers)`; the module adds its parser
and sets `func` to a callable taking the parsed args and returning an exit code. Only the module of the
subcommand being run is imported: `segment-export --help` loads no torch, and a missing export extra is
reported as such instead of a traceback.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ModelExportError

Command = Callable[[argparse.Namespace], int]  # a subcommand's `run`

# name -> (module, one-line help), in help order. tests/export/test_export_cli.py checks that each help line
# is the one the module registers.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": ("model_export.export_cli", "export a model to the ONNX contract"),
    "pretrained": ("model_export.weights_cli",
                   "download torchvision's published deeplabv3 / lraspp weights and export them to ONNX"),
    "train": ("model_export.train_cli", "train a DeepLab model on a VOC-layout dataset"),
    "evaluate": ("model_export.evaluate_cli", "mIoU / per-class IoU / pixel accuracy of a model on a split"),
    "convert-caffe": ("model_export.caffe.cli",
                      "convert the DeepLab-v2 ResNet-101 .caffemodel to ONNX (no Caffe needed)"),
    "msc": ("model_export.msc_cli", "bake multi-scale max-fusion inference into an exported ONNX file"),
    "synth": ("model_export.synth_cli", "write a synthetic segmentation dataset in the VOC layout"),
}
# Top-level modules that only the `export` extra installs.
EXPORT_EXTRA_MODULES = frozenset({"torch", "torchvision", "onnx", "onnxconverter_common", "google", "onnxscript"})
EXPORT_EXTRA_HINT = "pip install 'segment-service[export]'"


class CliError(Exception):
    """A user-facing failure: printed as one clear line, exit code 2, no traceback."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help line ends with its default; None and False (i.e. "not given") are left out."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        return (bool(action.option_strings) and action.help is not argparse.SUPPRESS
                and default is not None and default is not False and default is not argparse.SUPPRESS)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if self._shows_default(action) and "%(default)" not in text:
            text = f"{text} (default: %(default)s)".strip()
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):
            action = copy.copy(action)  # an option without help text still gets its default line
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class _SubcommandParser(argparse.ArgumentParser):
    """Subcommand parsers show their defaults, whichever module registers them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


class MissingExtraError(CliError):
    """A module of the `export` extra is not installed."""

    def __init__(self, command: str, module: str) -> None:
        super().__init__(f"`segment-export {command}` needs the export extra (torch, torchvision, onnx), "
                         f"which is not installed (no module named {module!r}). Install it with: "
                         f"{EXPORT_EXTRA_HINT}")


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The missing module's name if the export extra provides it, else None."""
    name = (exc.name or "").split(".")[0]
    return exc.name if name in EXPORT_EXTRA_MODULES else None


def one_line_errors(*kinds: type[Exception]) -> Callable[[Command], Command]:
    """A subcommand's `run` whose errors of `kinds` (a value its flags allow but the work refuses, an unwritable
    output) end as one-line CliErrors; a ModelExportError, itself a ValueError, passes as it is (`main` names the
    flag at fault)."""

    def wrap(run: Command) -> Command:
        @functools.wraps(run)
        def wrapped(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except ModelExportError:
                raise
            except kinds as exc:
                raise CliError(str(exc)) from None

        return wrapped

    return wrap


def read_class_names(path: Path, flag: str = "--classes") -> list[str]:
    """The JSON list of class names in `path` (a `--classes` file); CliError saying what is wrong with it."""
    try:
        names = json.loads(path.read_text())
    except OSError as exc:
        raise CliError(f"{flag} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"{flag} {path} is not JSON: {exc}") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CliError(f"{flag} {path} must hold a non-empty JSON list of class names (strings)")
    return names


def flag_of(option: str) -> str:
    """The flag that sets a keyword parameter: every subcommand spells `calibration_dir` `--calibration-dir`."""
    return "--" + option.replace("_", "-")


def command_line_message(exc: CliError | ModelExportError) -> str:
    """The line a user reads: a domain error that names its parameter names the flag instead."""
    if isinstance(exc, ModelExportError) and exc.option:
        return exc.naming_option_as(flag_of(exc.option))
    return str(exc)


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only `command`'s module is imported (None: none, every subcommand a stub)."""
    parser = argparse.ArgumentParser(
        prog="segment-export", description=__doc__.splitlines()[0],
        epilog=f"Every command but synth needs the export extra (torch, torchvision, onnx): {EXPORT_EXTRA_HINT}. "
               "`segment-export COMMAND --help` shows a command's options and their defaults.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            missing = _missing_extra(exc)
            if missing is None:
                raise
            raise MissingExtraError(name, missing) from exc
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `segment-export`."""
    argv = sys.argv[1:] if argv is None else argv
    command = _chosen_command(argv)
    try:
        args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        try:
            return int(args.func(args) or 0)
        except ModuleNotFoundError as exc:  # a lazy import inside the command
            missing = _missing_extra(exc)
            if missing is None:
                raise
            raise MissingExtraError(args.command, missing) from exc
    except (CliError, ModelExportError) as exc:
        print(f"segment-export {command or ''}: error: {command_line_message(exc)}".replace(" :", ":"),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every file a command writes replaces its target only once complete
        print(f"segment-export {command or ''}: interrupted; files it was writing were left as they were"
              .replace(" :", ":"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m model_export.cli` runs this file as `__main__`, while the subcommands import `model_export.cli`
    # and raise that module's CliError, a different class from this copy's: run the imported module's main, so
    # the errors it catches are the ones raised.
    from model_export.cli import main as imported_main

    sys.exit(imported_main())
