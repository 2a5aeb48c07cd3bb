"""`segment-export evaluate --resolution`: an ONNX file scored in tiles above its input size, as the service's
`POST /segment?resolution=` serves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.cli import main
from model_export.errors import ModelExportError
from model_export.evaluate import evaluate_model
from model_export.synthetic_mosaic import write_mosaics
from service.settings import default_model_path


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 960x640 mosaics of held-out scenes, each drawn at the scale the embedded model was trained on."""
    root = tmp_path_factory.mktemp("mosaics")
    write_mosaics(root, images=2, cols=3, rows=2)
    return root


def test_small_objects_in_a_large_image_score_higher_in_tiles(mosaics: Path) -> None:
    model = default_model_path()
    whole, _ = evaluate_model(model, mosaics, "val", protocol="letterbox", device="cpu", progress=False)
    at_input, _ = evaluate_model(model, mosaics, "val", protocol="letterbox", device="cpu", progress=False,
                                 resolution=320)  # the embedded model's input size: nothing changes
    tiled, _ = evaluate_model(model, mosaics, "val", protocol="letterbox", device="cpu", progress=False,
                              resolution="native")
    assert at_input.miou == whole.miou
    # The whole mosaic shrunk 3x loses its small objects' shapes; tiles see them at the scale of training.
    assert tiled.miou > whole.miou + 0.1, (whole.miou, tiled.miou)


def test_the_command_line_takes_a_resolution_and_refuses_what_cannot_use_it(
        mosaics: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(default_model_path())
    assert main(["evaluate", "--model", model, "--data", str(mosaics), "--protocol", "letterbox", "--device", "cpu",
                 "--resolution", "640", "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out
    for bad in ("0", "-5", "max", "32769"):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", "--model", model, "--data", str(mosaics), "--resolution", bad])
        assert exit_.value.code == 2
        assert "expected a number of pixels from 1 to 32768 or 'native'" in capsys.readouterr().err
    # Tiles score the served letterbox: not DeepLab's padded protocol, nor the CRF.
    assert main(["evaluate", "--model", model, "--data", str(mosaics), "--protocol", "native",
                 "--resolution", "native", "--no-progress"]) == 2
    assert "--resolution scores the served letterbox in tiles" in capsys.readouterr().err
    with pytest.raises(ModelExportError, match=r"scores an exported \.onnx file") as err:
        evaluate_model(tiny_checkpoint, mosaics, "val", progress=False, resolution=640)
    assert err.value.option == "resolution"
