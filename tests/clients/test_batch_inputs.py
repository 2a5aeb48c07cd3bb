"""What stops a `segment` run before anything is written: an --out that would take an input image for its own
output (instead of skipping the input as "already done" or, with --overwrite, replacing it), and options the API
refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.batch import main
from tests.clients.conftest import write_photos


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("output", "overwrite"), [("color", False), ("color", True), ("overlay", False)])
def test_an_output_that_would_be_an_input_stops_the_run(output: str, overwrite: bool, tiny_onnx_model: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`segment in/astronaut.png --out in`: the colour mask's file is in/astronaut.png itself; an overlay's is
    in/astronaut.jpg, but one too large for JPEG is stored as .png, and a rerun counts a .png as done."""
    inputs = tmp_path / "in"
    write_photos(inputs)
    before = _snapshot(inputs)
    args = [str(inputs / "astronaut.png"), "--out", str(inputs), "--output", output, "--local",
            str(tiny_onnx_model), "--no-progress", *(["--overwrite"] if overwrite else [])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "would write over input images" in err and str((inputs / "astronaut.png").resolve()) in err, err
    assert _snapshot(inputs) == before, "an input was changed, or something was written beside it"


def test_an_input_folder_as_out_stops_the_run(tiny_onnx_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """With --out the input folder itself, a run would write masks among the photos and the next run would
    segment those masks as photos (and take coffee.jpg's mask, coffee.png, for another input)."""
    inputs = tmp_path / "in"
    write_photos(inputs)
    before = _snapshot(inputs)
    for output in ("color", "stats"):
        assert main([str(inputs), "--out", str(inputs), "--output", output, "--local", str(tiny_onnx_model),
                     "--no-progress"]) == 2
        assert "is an input folder" in capsys.readouterr().err
    assert _snapshot(inputs) == before
    # Inside an input folder, or beside it, is fine.
    assert main([str(inputs), "--out", str(inputs / "masks"), "--output", "color", "--local", str(tiny_onnx_model),
                 "--no-progress"]) == 0
    assert sorted(_snapshot(inputs / "masks")) == [".segment-run.json", "astronaut.png", "coffee.png",
                                                   "sub/chelsea.png"]


@pytest.mark.parametrize("option", ["--tolerance", "--min-area"])
@pytest.mark.parametrize("value", ["-1", "nan"])
def test_options_the_api_refuses_stop_the_run_before_it_starts(option: str, value: str, server_url: str,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The API takes `tolerance` and `min_area` >= 0. Before: the run started, every file failed with 422 (or, in
    --local mode, a ValueError), and --out recorded the bad value, so a corrected rerun stopped on "other
    options"."""
    write_photos(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "in"), "--out", str(out), "--output", "polygons", "--server", server_url,
              option, value, "--no-progress"])
    assert exited.value.code == 2
    assert f"argument {option}: must be 0 or more" in capsys.readouterr().err
    assert not out.exists()
    assert main([str(tmp_path / "in"), "--out", str(out), "--output", "polygons", "--server", server_url,
                 option, "2", "--no-progress"]) == 0
