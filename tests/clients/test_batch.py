"""`segment` (clients.batch) against a real server and in local mode: same files, resume, bad files skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.batch import main
from service.core.output_kinds import OUTPUT_KINDS
from tests.clients.conftest import write_photos

REPO = Path(__file__).resolve().parents[2]
KINDS = ("labels", "color", "overlay", "polygons", "stats")
SUFFIX = {"labels": ".png", "color": ".png", "overlay": ".jpg", "polygons": ".geojson", "stats": ".json"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", KINDS)
def test_server_and_local_write_identical_files(kind: str, server_url: str, tiny_onnx_model: Path,
                                                tmp_path: Path) -> None:
    write_photos(tmp_path / "in")
    remote, local = tmp_path / "remote", tmp_path / "local"
    assert main([str(tmp_path / "in"), "--out", str(remote), "--output", kind, "--server", server_url,
                 "-j", "3", "--no-progress"]) == 0
    assert main([str(tmp_path / "in"), "--out", str(local), "--output", kind, "--local", str(tiny_onnx_model),
                 "-j", "2", "--no-progress"]) == 0
    remote_files, local_files = _files(remote), _files(local)
    suffix = SUFFIX[kind]
    assert sorted(remote_files) == [f"astronaut{suffix}", f"coffee{suffix}", f"sub/chelsea{suffix}"]
    assert remote_files == local_files  # byte for byte: one implementation behind both modes
    if kind == "labels":
        ids = np.asarray(Image.open(remote / "astronaut.png"))
        assert ids.shape == (80, 96)
    if kind == "stats":
        assert b'"timing_ms"' not in remote_files["astronaut.json"]
        assert b'"classes_present"' in remote_files["astronaut.json"]


@pytest.mark.parametrize("mode", ["server", "local"])
def test_bad_files_are_reported_and_skipped(mode: str, server_url: str, tiny_onnx_model: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    write_photos(inputs)
    good = (inputs / "coffee.jpg").read_bytes()
    (inputs / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (inputs / "notes.png").write_bytes(b"this is not an image at all\n")
    where = ["--server", server_url] if mode == "server" else ["--local", str(tiny_onnx_model)]
    status = main([str(inputs), "--out", str(tmp_path / "out"), "--output", "labels", "--no-progress", *where])
    assert status == 1
    err = capsys.readouterr().err
    assert "3 written, 0 skipped (already done), 2 failed, 5 total" in err
    assert f"FAILED {(inputs / 'truncated.jpg').resolve()}: corrupt_image" in err
    assert f"FAILED {(inputs / 'notes.png').resolve()}: unsupported_media_type" in err
    written = sorted(_files(tmp_path / "out"))
    assert written == ["astronaut.png", "coffee.png", "sub/chelsea.png"]  # no output, not even a partial one


def test_resume_skips_finished_files(server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    args = [str(inputs), "--out", str(out), "--output", "color", "--server", server_url, "--no-progress"]
    assert main(args) == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert len(first) == 3
    # An interrupted run leaves at most a .part file behind; it never counts as done.
    (out / "coffee.png").unlink()
    (out / "coffee.png.part").write_bytes(b"\x89PNG half")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 written, 2 skipped (already done), 0 failed, 3 total" in capsys.readouterr().err
    for path, mtime in first.items():
        if path.name != "coffee.png":
            assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    assert Image.open(out / "coffee.png").size == (120, 72)
    assert not (out / "coffee.png.part").exists()
    assert main([*args, "--overwrite"]) == 0
    assert "3 written, 0 skipped" in capsys.readouterr().err


def test_colliding_names_keep_their_extension(tiny_onnx_model: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    write_photos(inputs)
    Image.open(inputs / "coffee.jpg").save(inputs / "coffee.png")
    assert main([str(inputs), "--out", str(tmp_path / "out"), "--output", "stats", "--local",
                 str(tiny_onnx_model), "--no-progress"]) == 0
    assert sorted(_files(tmp_path / "out")) == ["astronaut.json", "coffee.jpg.json", "coffee.png.json",
                                                "sub/chelsea.json"]


def test_cli_process_and_unreachable_server(tmp_path: Path) -> None:
    write_photos(tmp_path / "in")
    done = subprocess.run([sys.executable, "-m", "clients.batch", str(tmp_path / "in"), "--out",
                           str(tmp_path / "out"), "--server", "http://127.0.0.1:9", "--wait", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "not reachable" in done.stderr
    usage = subprocess.run([sys.executable, "-m", "clients.batch", str(tmp_path / "in"), "--out", "x"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--server" in usage.stderr


def test_help_lists_the_kinds_of_the_output_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    for kind in OUTPUT_KINDS.values():
        suffixes = " ".join(e.suffix for e in kind.encodings)
        assert f"{kind.name} {suffixes} {' '.join(kind.description.split())}" in text
    overlay_formats = [e.format for e in OUTPUT_KINDS["overlay"].encodings]
    assert f"--format {{{','.join(overlay_formats)}}}" in text
    assert f"overlay format (default {overlay_formats[0]})" in text
