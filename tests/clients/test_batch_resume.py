"""What a `segment` rerun may resume: files made by the same model (locally known by the file's sha256, on a server
by what `GET /classes` tells), with the same effective options (an explicit default is the default), and never
two inputs written to one file on a case-insensitive filesystem."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import onnx
import pytest
from PIL import Image

from clients.batch import main
from testkit.photos import photo
from tests.clients.conftest import write_photos
from tests.service.svc_helpers import make_rule_model, running_server

RUN_FILE = ".segment-run.json"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != RUN_FILE}


def _reexported(src: Path, dst: Path) -> Path:
    """`src` under the same file name with other bytes, as a re-export from another checkpoint would be: the same
    name, architecture, precision, input size and source; another sha256."""
    model = onnx.load(str(src))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "note": "re-exported"})
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def _photos_and_two_exports(model: Path, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """An input folder of photos, an output folder, and two files named model.onnx: `model` and a re-export."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    first = tmp_path / "v1" / "model.onnx"
    first.parent.mkdir()
    shutil.copy(model, first)
    return inputs, out, first, _reexported(model, tmp_path / "v2" / "model.onnx")


def test_a_rerun_with_another_local_model_stops(tiny_onnx_model: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Before: each rerun below skipped all three files "already done", leaving the first model's masks."""
    inputs, out, first, second = _photos_and_two_exports(tiny_onnx_model, tmp_path)
    rule = make_rule_model(tmp_path / "rule.onnx")
    common = [str(inputs), "--out", str(out), "--output", "labels", "--no-progress"]
    assert main([*common, "--local", str(first)]) == 0
    made = _files(out)
    capsys.readouterr()
    assert main([*common, "--local", str(second)]) == 2  # one name, other bytes
    err = capsys.readouterr().err
    assert "made by another model (model (sha256 " in err and "--overwrite" in err, err
    assert main([*common, "--local", str(rule)]) == 2
    assert "made by another model (model (" in capsys.readouterr().err
    assert _files(out) == made
    assert main([*common, "--local", str(first)]) == 0  # the same model again: resume
    assert "0 written, 3 skipped (already done)" in capsys.readouterr().err
    assert main([*common, "--local", str(rule), "--overwrite"]) == 0
    recorded = json.loads((out / RUN_FILE).read_text())["model"]
    assert recorded["name"] == "rule" and recorded["arch"] == "rule" and len(recorded["sha256"]) == 64
    assert _files(out) != made


def test_a_rerun_against_a_server_serving_another_model_stops(server_url: str, tiny_onnx_model: Path,
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The server tells its model in `GET /classes`; the same model run here resumes the server's files (they are
    the same bytes), another one on a server does not."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    common = [str(inputs), "--out", str(out), "--output", "color", "--no-progress"]
    assert main([*common, "--server", server_url]) == 0
    recorded = json.loads((out / RUN_FILE).read_text())["model"]
    assert recorded["name"] == tiny_onnx_model.stem and recorded["arch"] == "deeplabv3_thin"
    made = _files(out)
    capsys.readouterr()
    assert main([*common, "--local", str(tiny_onnx_model)]) == 0
    assert "0 written, 3 skipped (already done)" in capsys.readouterr().err
    with running_server(make_rule_model(tmp_path / "rule.onnx")) as other_url:
        assert main([*common, "--server", other_url]) == 2
        err = capsys.readouterr().err
        assert f"made by another model ({tiny_onnx_model.stem} (arch deeplabv3_thin" in err, err
        assert "then, rule (arch rule" in err, err
        assert _files(out) == made


def test_a_server_serving_a_reexport_under_the_same_name_stops_the_rerun(tiny_onnx_model: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Same file name, architecture, precision, input size and source; other weights: only the sha256 the server
    tells in `GET /classes` shows it (before, the rerun skipped every file as already done)."""
    inputs, out, first, second = _photos_and_two_exports(tiny_onnx_model, tmp_path)
    common = [str(inputs), "--out", str(out), "--output", "labels", "--no-progress"]
    with running_server(first) as url:
        assert main([*common, "--server", url]) == 0
    made = _files(out)
    capsys.readouterr()
    with running_server(second) as url:
        assert main([*common, "--server", url]) == 2
    assert "made by another model (model (sha256 " in capsys.readouterr().err
    assert _files(out) == made
    assert main([*common, "--local", str(first)]) == 0  # the server's model, run here: its files resume
    assert "0 written, 3 skipped (already done)" in capsys.readouterr().err


def test_a_folder_recorded_before_models_resumes_and_records_the_model(tiny_onnx_model: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A record as the earlier version wrote it: options left out as null, no model. It resumes (no false
    conflict) with any model, and the model is recorded from then on."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    common = [str(inputs), "--out", str(out), "--output", "overlay", "--no-progress"]
    assert main([*common, "--local", str(tiny_onnx_model)]) == 0
    (out / RUN_FILE).write_text(json.dumps({"output": "overlay", "format": None, "alpha": None, "tolerance": None,
                                            "min_area": None}))
    capsys.readouterr()
    assert main([*common, "--local", str(tiny_onnx_model), "--format", "jpeg", "--alpha", "0.5"]) == 0
    assert "0 written, 3 skipped (already done)" in capsys.readouterr().err
    assert json.loads((out / RUN_FILE).read_text())["model"]["name"] == tiny_onnx_model.stem
    assert main([*common, "--local", str(make_rule_model(tmp_path / "rule.onnx"))]) == 2
    assert "made by another model" in capsys.readouterr().err


@pytest.mark.parametrize(("output", "first", "again"), [
    ("overlay", [], ["--format", "jpeg"]),
    ("overlay", ["--format", "jpeg"], []),
    ("overlay", [], ["--alpha", "0.5"]),
    ("polygons", [], ["--tolerance", "1"]),
    ("color", [], ["--format", "png"]),  # the kind's one format, named
])
def test_an_explicit_default_resumes(output: str, first: list[str], again: list[str], tiny_onnx_model: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `--format jpeg` against a folder written without it stopped on "--format default then, jpeg now",
    though an overlay's default format is jpeg."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    common = [str(inputs), "--out", str(out), "--output", output, "--local", str(tiny_onnx_model), "--no-progress"]
    assert main([*common, *first]) == 0
    capsys.readouterr()
    assert main([*common, *again]) == 0, capsys.readouterr().err
    assert "0 written, 3 skipped (already done)" in capsys.readouterr().err


def test_a_value_other_than_the_default_still_stops(tiny_onnx_model: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    common = [str(inputs), "--out", str(out), "--output", "overlay", "--local", str(tiny_onnx_model), "--no-progress"]
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--format", "png"]) == 2
    assert "--format jpeg then, png now" in capsys.readouterr().err
    assert main([*common, "--alpha", "0.7"]) == 2
    assert "--alpha 0.5 then, 0.7 now" in capsys.readouterr().err


NFC_E, NFD_E = unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")


@pytest.mark.parametrize("names", [
    ("A.png", "a.png"),
    ("x.PNG", "x.png"),  # x.png both; with the extension kept, x.PNG.png and x.png.png
    ("Sub/x.png", "sub/x.png"),
    (f"caf{NFC_E}.png", f"caf{NFD_E}.png"),  # one name to macOS: é as one character or as e plus an accent
])
def test_names_that_differ_only_in_case_stop_the_run(names: tuple[str, str], tiny_onnx_model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """On macOS, Windows and many mounts the second output would overwrite the first (before: exit 0, one file
    left there for two inputs)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    for index, name in enumerate(names):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo("coffee.png", (40 + 8 * index, 30))).save(inputs / name, "PNG")
    assert sum(p.is_file() for p in inputs.rglob("*")) == 2  # two files here: this filesystem tells the names apart
    assert main([str(inputs), "--out", str(out), "--output", "stats", "--local", str(tiny_onnx_model),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "differ only in case" in err
    assert f"{(inputs / names[0]).resolve()}, {(inputs / names[1]).resolve()} -> " in err or \
        f"{(inputs / names[1]).resolve()}, {(inputs / names[0]).resolve()} -> " in err, err
    assert not out.exists()


def test_names_differing_in_case_keep_their_extension_where_that_tells_them_apart(
        tiny_onnx_model: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for index, name in enumerate(["A.jpg", "a.png", "b.png"]):
        Image.fromarray(photo("coffee.png", (40 + 8 * index, 30))).save(inputs / name)
    assert main([str(inputs), "--out", str(out), "--output", "stats", "--local", str(tiny_onnx_model),
                 "--no-progress"]) == 0
    written = _files(out)
    assert sorted(written) == ["A.jpg.json", "a.png.json", "b.json"]  # before: A.json and a.json
    assert sorted(json.loads(body)["width"] for body in written.values()) == [40, 48, 56]


def test_an_output_that_is_an_input_but_for_case_stops_the_run(tiny_onnx_model: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`segment in/X.PNG --out in`: the colour mask's in/X.png is the input itself on a case-insensitive
    filesystem (skipped as "already done", or, with --overwrite, written over the photo)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(photo("coffee.png", (40, 30))).save(inputs / "X.PNG", "PNG")
    assert main([str(inputs / "X.PNG"), "--out", str(inputs), "--output", "color", "--local", str(tiny_onnx_model),
                 "--no-progress", "--overwrite"]) == 2
    assert "would write over input images" in capsys.readouterr().err
    assert sorted(p.name for p in inputs.iterdir()) == ["X.PNG"]
