"""An engine is built from one model file: a file replaced after the engine first opened it (a rollout's atomic
rename) refuses the engine (`ModelFileChanged`) instead of mixing one file's metadata and sha256 with the other's
graphs in the bucket sessions built during warm-up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.core import engine as engine_module
from service.core.engine import load_engine
from service.core.model_file import ModelFileChanged, ModelFileIdentity, file_sha256
from service.core.options import EngineOptions


def replace_atomically(path: Path, source: Path) -> None:
    """What a rollout does: write the new file beside the served one, then rename it over it."""
    partial = path.with_name(path.name + ".new")
    shutil.copyfile(source, partial)
    os.replace(partial, path)


@pytest.fixture
def served(tmp_path: Path, tiny_onnx_model: Path) -> Path:
    return Path(shutil.copyfile(tiny_onnx_model, tmp_path / "model.onnx"))


def bucket_options(model: Path) -> EngineOptions:
    return EngineOptions(model_path=model, providers="cpu", fixed_shapes="on", max_batch_size=2,
                         intra_op_threads=1)


def test_buckets_built_after_the_file_was_replaced_refuse_the_engine(served: Path,
                                                                    tiny_onnx_model_with_confidence: Path) -> None:
    engine = load_engine(bucket_options(served))
    replace_atomically(served, tiny_onnx_model_with_confidence)
    with pytest.raises(ModelFileChanged, match=r"was replaced while the engine was built \(the session of bucket"):
        engine.warm_up()


def test_buckets_of_an_unchanged_file_are_built(served: Path) -> None:
    engine = load_engine(bucket_options(served))
    assert engine.warm_up() > 0
    assert engine.runner is not None and list(engine.runner.sizes) == [1, 2]
    assert engine.sha256 == file_sha256(served)


def test_a_file_replaced_while_it_is_hashed_refuses_the_engine(served: Path, tiny_onnx_model_with_confidence: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 of the file replaced is not reported for the session opened from the one before."""
    def hash_then_replace(path: str | Path) -> str:
        digest = file_sha256(path)
        replace_atomically(served, tiny_onnx_model_with_confidence)
        return digest

    monkeypatch.setattr(engine_module, "file_sha256", hash_then_replace)
    with pytest.raises(ModelFileChanged, match="its sha256"):
        load_engine(EngineOptions(model_path=served, providers="cpu"))


def test_a_copy_over_the_file_in_place_is_a_change_too(served: Path, tiny_onnx_model_with_confidence: Path) -> None:
    identity = ModelFileIdentity.of(served)
    identity.check(served, "nothing changed")
    shutil.copyfile(tiny_onnx_model_with_confidence, served)  # the same inode, other bytes
    with pytest.raises(ModelFileChanged):
        identity.check(served, "after a copy")
    served.unlink()
    with pytest.raises(ModelFileChanged, match="went away"):
        identity.check(served, "after removal")
