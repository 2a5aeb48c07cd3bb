"""`segment-export` help: fast without torch, every option's default shown, and a missing export extra is one
clear line that says what to install (checked in a subprocess where torch, torchvision and onnx cannot load)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest

from model_export.cli import SUBCOMMANDS, DefaultsHelpFormatter, build_parser
from testkit import REPO

# Make the export extra's modules unimportable, as in a venv with only the serve extra.
WITHOUT_EXPORT_EXTRA = (
    "import sys\n"
    "for name in ('torch', 'torchvision', 'onnx', 'onnxconverter_common'): sys.modules[name] = None\n"
    "from model_export.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_cli(*args: str, block_export_extra: bool = True) -> subprocess.CompletedProcess:
    code = WITHOUT_EXPORT_EXTRA if block_export_extra else (
        "import sys\nfrom model_export.cli import main\ntry:\n    sys.exit(main(sys.argv[1:]))\nfinally:\n"
        "    print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=env)


def test_top_level_help_needs_no_torch_and_is_fast() -> None:
    start = time.perf_counter()
    out = run_cli("--help", block_export_extra=False)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert "NO_TORCH" in out.stderr, "building the top-level parser imported torch"
    for name in SUBCOMMANDS:
        assert name in out.stdout
    assert "segment-service[export]" in out.stdout.replace("\n", " ").replace("  ", " ")
    # A new interpreter plus argparse: well under a second; importing torch alone takes about 3 s here.
    assert elapsed < 2.5, f"segment-export --help took {elapsed:.2f} s"


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_help_works_without_the_export_extra(name: str) -> None:
    """Parsers are built from torch-free modules: each command's help, defaults included, needs only the
    serve extra, and its command imports torch only when it runs."""
    out = run_cli(name, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: segment-export {name}") and "(default: " in out.stdout, out.stdout


def test_the_torch_free_catalog_names_what_the_models_build() -> None:
    from model_export import architectures, catalog, weights

    assert tuple(architectures.ARCHITECTURES) == catalog.ARCH_NAMES
    assert weights.PUBLISHED is catalog.PUBLISHED and set(catalog.PUBLISHED) <= set(catalog.ARCH_NAMES)


def test_export_options_default_to_what_the_exporters_default_to() -> None:
    """One default per setting: the CLI's and the functions' come from the same constant."""
    import inspect

    from model_export.cli import build_parser
    from model_export.evaluate import evaluate_model
    from model_export.export import export_onnx
    from model_export.quantize import make_variant
    from model_export.triton import write_triton_repository

    def default(func, name):
        return inspect.signature(func).parameters[name].default

    args = build_parser("export").parse_args(["export", "--random-init", "-o", "x.onnx"])
    assert args.opset == default(export_onnx, "opset")
    assert args.calibration_count == default(make_variant, "calibration_count")
    assert args.precision == "fp32"
    batch = build_parser("evaluate").parse_args(["evaluate", "--model", "m.onnx", "--data", "d"]).batch_size
    assert batch == default(evaluate_model, "batch_size") == default(write_triton_repository, "max_batch_size")


def test_without_the_export_extra_help_works_and_commands_say_what_to_install() -> None:
    assert run_cli("--help").returncode == 0
    for args in (["export", "--random-init", "--arch", "deeplabv3_thin", "-o", "x.onnx"],
                 ["train", "--data", "d", "--out", "o"], ["pretrained", "deeplabv3_resnet50"]):
        out = run_cli(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and "ModuleNotFoundError" not in out.stderr, out.stderr
        assert "export extra" in out.stderr and "pip install 'segment-service[export]'" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_shows_its_defaults_and_its_stub_help_matches(name: str) -> None:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registered = {choice.dest: choice.help for choice in sub._choices_actions}
    assert registered[name] == SUBCOMMANDS[name][1], "the top-level help line differs from the module's"
    command = sub.choices[name]
    text = " ".join(command.format_help().split())
    shown = [a for a in command._actions if DefaultsHelpFormatter._shows_default(a)]
    for action in shown:
        assert f"(default: {action.default})" in text, (name, action.option_strings)
