"""Every writer of a file the user names (msc, fp16, int8, a variant with its record, a Triton repository, a
training checkpoint) leaves the previous file untouched, and nothing beside it, when interrupted mid-write."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from service.core.contract import ContractError

OLD = b"the model served until now"


def _half_write(*args: object, **kwargs: object) -> None:
    """A writer (onnx.save, quantize_static, copyfile, torch.save: the output is the second argument) that gets
    half its bytes out, then Ctrl-C."""
    Path(str(args[1])).write_bytes(b"half a file")
    raise KeyboardInterrupt


def _msc(src: Path, out: Path, mp: pytest.MonkeyPatch) -> Callable[[], object]:
    from model_export.msc import bake_msc

    mp.setattr(onnx, "save", _half_write)
    return lambda: bake_msc(src, out, (0.5, 1.0), False)


def _fp16(src: Path, out: Path, mp: pytest.MonkeyPatch) -> Callable[[], object]:
    from model_export.quantize_fp16 import convert_fp16

    mp.setattr(onnx, "save", _half_write)
    return lambda: convert_fp16(src, out)


def _int8(src: Path, out: Path, mp: pytest.MonkeyPatch) -> Callable[[], object]:
    import onnxruntime.quantization

    from model_export.quantize_int8 import quantize_int8

    mp.setattr(onnxruntime.quantization, "quantize_static", _half_write)
    calib = SimpleNamespace(count=1, origin="tests", images=[np.zeros((64, 64, 3), np.uint8)])
    return lambda: quantize_int8(src, out, calib)  # type: ignore[arg-type]


def _variant(src: Path, out: Path, mp: pytest.MonkeyPatch) -> Callable[[], object]:
    """make_variant writes the fp16 graph, then its record, then checks: a failed check must not leave it."""
    from model_export import quantize

    def refuse(*args: object, **kwargs: object) -> None:
        raise ContractError("injected: the variant lost the contract")

    mp.setattr(quantize, "check_contract", refuse)
    return lambda: quantize.make_variant(src, out, "fp16")


def _triton(src: Path, out: Path, mp: pytest.MonkeyPatch) -> Callable[[], object]:
    from model_export import triton

    mp.setattr(triton.shutil, "copyfile", _half_write)
    return lambda: triton.write_triton_repository(src, out.parents[2])


def _checkpoint(src: Path, out: Path, mp: pytest.MonkeyPatch) -> Callable[[], object]:
    from model_export.checkpoint import save_checkpoint

    mp.setattr(torch, "save", _half_write)
    return lambda: save_checkpoint(out, {"arch": "deeplabv3_thin"})


@pytest.mark.parametrize(("writer", "name"), [
    (_msc, "m.msc.onnx"), (_fp16, "m.fp16.onnx"), (_int8, "m.int8.onnx"), (_variant, "m.fp16.onnx"),
    (_triton, "repo/segmentation/1/model.onnx"), (_checkpoint, "checkpoint.pt"),
], ids=["msc", "fp16", "int8", "variant", "triton", "checkpoint"])
def test_an_interrupted_write_keeps_the_old_file(writer: Callable[..., Callable[[], object]], name: str,
                                                 tiny_onnx_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "tiny.onnx"
    shutil.copyfile(tiny_onnx_model, src)
    out = tmp_path / "out" / name
    out.parent.mkdir(parents=True)
    out.write_bytes(OLD)
    run = writer(src, out, monkeypatch)
    with pytest.raises((KeyboardInterrupt, ContractError)):
        run()
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no draft left beside it
