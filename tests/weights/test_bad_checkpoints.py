"""Corrupt, truncated and mismatched checkpoints fail with one clear message naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.weights import WeightsError, load_weights


@pytest.fixture()
def thin_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("deeplabv3_thin", 21).state_dict()


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_truncated_file(thin_state, tmp_path) -> None:
    path = _save(thin_state, tmp_path / "full.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"not a readable PyTorch checkpoint \(truncated or corrupt") as err:
        load_weights(path, arch="deeplabv3_thin")
    assert "\n" not in str(err.value)


def test_garbage_file(tmp_path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_weights(path, arch="deeplabv3_thin")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "nope.pth")


def test_missing_unexpected_and_shape_mismatch_are_listed(thin_state, tmp_path) -> None:
    state = dict(thin_state)
    del state["backbone.conv1.weight"]
    state["backbone.layer9.weight"] = torch.zeros(1)
    state["classifier.4.bias"] = torch.zeros(7)
    with pytest.raises(WeightsError) as err:
        load_weights(_save(state, tmp_path / "bad.pth"), arch="deeplabv3_thin")
    msg = str(err.value)
    assert "1 missing keys: backbone.conv1.weight" in msg
    assert "1 unexpected keys: backbone.layer9.weight" in msg
    assert "classifier.4.bias (7,) vs model (21,)" in msg


def test_long_key_lists_are_summarised(thin_state, tmp_path) -> None:
    state = {k: v for k, v in thin_state.items() if not k.startswith("backbone.layer4.")}
    # num_batches_tracked buffers are filled in (old files lack them), so they are not reported.
    dropped = sum(1 for k in thin_state if k.startswith("backbone.layer4.") and "num_batches" not in k)
    with pytest.raises(WeightsError) as err:
        load_weights(_save(state, tmp_path / "bad.pth"), arch="deeplabv3_thin")
    msg = str(err.value)
    assert f"{dropped} missing keys" in msg
    assert f"and {dropped - 8} more" in msg
    assert len(msg) < 1500


def test_wrong_architecture_is_explained(thin_state, tmp_path) -> None:
    with pytest.raises(WeightsError, match="cannot tell the architecture"):
        load_weights(_save(thin_state, tmp_path / "thin.pth"))
    with pytest.raises(WeightsError, match="does not fit deeplabv3_resnet50"):
        load_weights(_save(thin_state, tmp_path / "thin.pth"), arch="deeplabv3_resnet50")


def test_old_files_and_dataparallel_prefix_load(thin_state, tmp_path) -> None:
    # Files from before BN counted batches, saved from a DataParallel model, inside a {"model": ...} dict.
    state = {f"module.{k}": v for k, v in thin_state.items() if not k.endswith("num_batches_tracked")}
    model, info = load_weights(_save({"model": state, "epoch": 3}, tmp_path / "dp.pth"), arch="deeplabv3_thin")
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, thin_state[key]), key
    assert info["num_classes"] == 21 and info["kind"] == "torchvision"


def test_not_a_state_dict(tmp_path) -> None:
    with pytest.raises(WeightsError, match="holds a list"):
        load_weights(_save([1, 2, 3], tmp_path / "list.pth"))
    with pytest.raises(WeightsError, match="no tensors"):
        load_weights(_save({"epoch": 3}, tmp_path / "empty.pth"))


def _training_checkpoint(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    from model_export.checkpoint import rng_state, save_checkpoint

    return save_checkpoint(tmp_path / "train.pt", {
        "arch": "deeplabv3_thin", "num_classes": 21, "model_kwargs": {}, "preprocessing": "imagenet",
        "classes": [f"c{i}" for i in range(21)], "input_size": 96, "state_dict": state,
        "rng": rng_state(), "source": "tests",
    })


def test_project_training_checkpoint_loads_through_checkpoint_module(thin_state, tmp_path) -> None:
    # The RNG state holds numpy arrays, which the weights-only unpickler refuses: dispatch must still work.
    model, info = load_weights(_training_checkpoint(tmp_path, thin_state))
    assert info["kind"] == "project" and info["arch"] == "deeplabv3_thin"
    assert info["classes"][3] == "c3" and info["input_size"] == 96 and len(info["sha256"]) == 64
    assert all(torch.equal(v, thin_state[k]) for k, v in model.state_dict().items())


def test_mismatched_training_checkpoint_lists_keys(thin_state, tmp_path) -> None:
    state = dict(thin_state)
    del state["classifier.4.weight"]
    with pytest.raises(WeightsError, match=r"checkpoint train.pt does not fit.*missing keys: classifier.4.weight"):
        load_weights(_training_checkpoint(tmp_path, state))


def test_foreign_pickle_is_refused_clearly(tmp_path) -> None:
    import numpy as np

    path = _save({"weights": np.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsError, match=r"not a model_export\.train checkpoint"):
        load_weights(path)
