"""Multi-scale max fusion baked into the ONNX graph equals eager PyTorch MSC; the contract is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_export.cli import main
from model_export.evaluate import predict_probs
from model_export.export import read_metadata
from model_export.msc import MscError, bake_msc
from tests.export.parity_helpers import _batch, _export


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("msc")
    model, _ = _export("deeplabv3_thin", {}, tmp)
    return model, Path(tmp / "deeplabv3_thin.onnx")


@pytest.mark.parametrize(("scales", "flip"), [((0.5, 0.75, 1.0), False), ((0.5, 0.75, 1.0), True),
                                              ((0.75, 1.25), False)])
def test_msc_graph_equals_eager_msc(exported, tmp_path: Path, scales, flip) -> None:
    model, single = exported
    path = bake_msc(single, tmp_path / "msc.onnx", scales, flip)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree = total = 0
    for size in ((97, 131), (240, 320)):  # odd sizes: floor(H·s) in both
        images = _batch(size, 2)
        (labels,) = session.run(None, {"image": images})
        assert labels.dtype == np.uint8 and labels.shape == (2, *size)
        for image, got in zip(images, labels, strict=True):
            expected = predict_probs(model, image, scales, flip, fusion="max").argmax(0).numpy()
            agree += int((got == expected).sum())
            total += got.size
        # The fusion is real: a single-scale run disagrees somewhere.
        (plain,) = ort.InferenceSession(str(single), providers=["CPUExecutionProvider"]).run(
            None, {"image": images})
        assert (plain != labels).any()
    assert agree / total >= 0.999, agree / total


def test_msc_keeps_the_contract_and_records_itself(exported, tmp_path: Path) -> None:
    from service.core.engine import load_engine
    from service.core.options import EngineOptions
    from service.core.pipeline import Pipeline

    _, single = exported
    path = bake_msc(single, tmp_path / "msc.onnx", flip=True)
    meta = read_metadata(path)
    assert json.loads(meta.extra["msc_scales"]) == [0.5, 0.75, 1.0] and meta.extra["msc_flip"] == "true"
    assert meta.classes == read_metadata(single).classes
    # Shared weights: the file grows by the extra nodes only.
    assert path.stat().st_size < 1.2 * single.stat().st_size
    engine = load_engine(EngineOptions(model_path=path, providers="cpu", intra_op_threads=1))
    (labels,) = Pipeline(engine).segment_images([_batch((90, 70), 1)[0]])
    assert labels.shape == (90, 70)
    with pytest.raises(MscError, match="already"):
        bake_msc(path, tmp_path / "twice.onnx")


def test_cli_export_msc_and_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--random-init", "--arch", "deeplabv3_thin", "--num-classes", "3",
                 "--msc", "0.5,1", "-o", str(out)]) == 0
    assert json.loads(read_metadata(out).extra["msc_scales"]) == [0.5, 1.0]
    assert main(["export", "--random-init", "--arch", "deeplabv3_thin", "--msc", "0,1", "-o", str(out)]) == 2
    assert "--msc" in capsys.readouterr().err
    assert main(["msc", str(out), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "already fuses" in capsys.readouterr().err
    assert main(["msc", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.onnx")]) == 2
    half = tmp_path / "half.onnx"
    assert main(["export", "--random-init", "--arch", "deeplabv3_thin", "--num-classes", "3", "--msc", "0.5,1",
                 "--precision", "fp16", "-o", str(half)]) == 0
    assert json.loads(read_metadata(half).extra["msc_scales"]) == [0.5, 1.0]
    capsys.readouterr()
    assert main(["msc", str(half), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "fp16 variant" in capsys.readouterr().err
