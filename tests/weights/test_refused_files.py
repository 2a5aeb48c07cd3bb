"""The one loader calls nothing a file names beyond tensors, plain values and the globals its caller allows (a
training checkpoint's numpy RNG state); what it refuses is named, in one line, and nothing of it runs."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import (
    CHECKPOINT_GLOBALS,
    CheckpointError,
    read_training_checkpoint,
    rng_state,
    save_checkpoint,
)
from model_export.cli import main
from model_export.torch_io import UnsafeFileError, load_torch_file, sha256_file
from tests.weights.hostile_files import ExecPayload, respell_numpy_module, state_dict_with_payload

NUMPY_ARRAY = ["numpy._core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray"]


def test_a_payload_is_refused_by_name_and_never_runs(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    path = state_dict_with_payload(tmp_path / "evil.pth", ExecPayload(mark))
    for allowed in ((), CHECKPOINT_GLOBALS):
        with pytest.raises(UnsafeFileError) as err:
            load_torch_file(path, allowed=allowed)
        assert err.value.names == ["builtins.exec"] and isinstance(err.value, pickle.UnpicklingError)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert not mark.exists()


def test_numpy_arrays_load_only_where_allowed(tmp_path: Path) -> None:
    path = tmp_path / "rng.pt"
    torch.save({"w": torch.arange(3.0), "key": np.arange(5, dtype=np.uint32)}, path)
    with pytest.raises(UnsafeFileError) as err:
        load_torch_file(path)
    assert err.value.names == NUMPY_ARRAY
    blob = load_torch_file(path, allowed=CHECKPOINT_GLOBALS)
    assert torch.equal(blob["w"], torch.arange(3.0)) and np.array_equal(blob["key"], np.arange(5))


@pytest.mark.parametrize(("content", "named"), [
    (np.zeros(3), "numpy.dtypes.Float64DType"),  # an array, but not of the dtype a numpy RNG state holds
    (argparse.Namespace(lr=0.1), "argparse.Namespace"),  # training settings as an object, not a dict
])
def test_a_checkpoint_needing_any_other_global_is_refused_in_one_line(content: object, named: str,
                                                                       tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    save_checkpoint(path, {"arch": "deeplabv3_thin", "state_dict": {}, "rng": rng_state(), "extra": content})
    with pytest.raises(CheckpointError) as err:
        read_training_checkpoint(path)
    message = str(err.value)
    assert f"{path} is not a model_export.train checkpoint" in message and named in message
    assert "\n" not in message


def test_a_checkpoint_numpy_1_wrote_loads(tmp_path: Path) -> None:
    """numpy 1.x pickles arrays through `numpy.core.multiarray` (pyproject allows numpy>=1.24)."""
    np.random.seed(3)
    state = rng_state()
    path = save_checkpoint(tmp_path / "np2.pt", {"arch": "deeplabv3_thin", "state_dict": {}, "rng": state})
    old = respell_numpy_module(path, tmp_path / "np1.pt")
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(old)
    key = read_training_checkpoint(old)["rng"]["numpy"][1]
    assert np.array_equal(key, state["numpy"][1]) and key.dtype == np.uint32


@pytest.mark.parametrize("with_rng", [True, False])
def test_pretrained_url_refuses_a_training_checkpoint(with_rng: bool, served_dir: tuple[Path, str],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, base = served_dir
    torch.manual_seed(0)
    ckpt = {"arch": "deeplabv3_thin", "num_classes": 21, "state_dict": build_model("deeplabv3_thin", 21).state_dict()}
    if with_rng:  # what `train` writes; without, what `convert-caffe --checkpoint` writes (tensors only)
        ckpt["rng"] = rng_state()
    written = save_checkpoint(tmp_path / "run.pt", ckpt)
    served = root / f"run-{sha256_file(written)[:8]}.pth"
    served.write_bytes(written.read_bytes())
    out = tmp_path / "p.onnx"
    code = main(["pretrained", "deeplabv3_resnet50", "--url", base + served.name,
                 "--cache-dir", str(tmp_path / "cache"), "-o", str(out)])
    err = capsys.readouterr().err.strip()  # the download's progress bar, then the error
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("segment-export pretrained: error: ")
    assert "is not a torchvision state_dict" in err.splitlines()[-1] and served.name in err.splitlines()[-1]
    assert not out.exists()
