"""`segment` (clients.batch) against a real server and in local mode: same files, resume, bad files skipped."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients import batch
from clients.batch import main
from service.client import SegmentResult
from service.core import crf
from service.core.output_kinds import JPEG_MAX_SIDE, OUTPUT_KINDS
from testkit.photos import photo
from tests.clients.conftest import API_KEY, write_photos
from tests.service.svc_helpers import make_rule_model, running_server

REPO = Path(__file__).resolve().parents[2]
KINDS = ("labels", "color", "overlay", "polygons", "stats")
SUFFIX = {"labels": ".png", "color": ".png", "overlay": ".jpg", "polygons": ".geojson", "stats": ".json"}


RUN_FILE = ".segment-run.json"


def _files(root: Path) -> dict[str, bytes]:
    """The outputs under `root` (the run's record of its options left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != RUN_FILE}


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
    # An interrupted run leaves at most a hidden temporary file behind; it never counts as done.
    (out / "coffee.png").unlink()
    (out / ".segment-0123456789abcdef.part").write_bytes(b"\x89PNG half")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 written, 2 skipped (already done), 0 failed, 3 total" in capsys.readouterr().err
    for path, mtime in first.items():
        if path.name != "coffee.png":
            assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    assert Image.open(out / "coffee.png").size == (120, 72)
    assert list(out.glob("*.part")) == []  # the one left removed (no run writes it), and no new one
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


def test_no_two_inputs_share_an_output_file(tiny_onnx_model: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A kept extension that lands on another file's name is renamed again; the same relative path under two
    inputs stops the run before anything is written."""
    in1, in2 = tmp_path / "in1", tmp_path / "in2"
    for index, path in enumerate([in1 / "a.jpg", in1 / "a.png", in1 / "a.jpg.png", in1 / "x.jpg", in2 / "x.jpg"]):
        path.parent.mkdir(exist_ok=True)
        image = Image.fromarray(photo("coffee.png", (40 + 8 * index, 30)))
        image.save(path, "JPEG" if path.suffix == ".jpg" else "PNG")
    out = tmp_path / "out"
    assert main([str(in1), "--out", str(out), "--output", "stats", "--local", str(tiny_onnx_model),
                 "-j", "4", "--no-progress"]) == 0
    written = _files(out)
    # a.jpg and a.png keep their extension; then a.jpg.png (-> a.jpg.json, as a.jpg's) keeps its own as well.
    assert sorted(written) == ["a.jpg.json", "a.jpg.png.json", "a.png.json", "x.json"]
    widths = sorted(json.loads(body)["width"] for body in written.values())
    assert widths == [40, 48, 56, 64]  # four inputs, four files: none overwrote another
    capsys.readouterr()
    assert main([str(in1), str(in2), "--out", str(tmp_path / "two"), "--output", "stats", "--local",
                 str(tiny_onnx_model), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{(in1 / 'x.jpg').resolve()}, {(in2 / 'x.jpg').resolve()} -> {tmp_path / 'two' / 'x.json'}" in err
    assert not (tmp_path / "two").exists()


def test_an_output_folder_inside_the_input_is_not_read_back(tiny_onnx_model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    write_photos(inputs)
    args = [str(inputs), "--out", str(inputs / "masks"), "--output", "color", "--local", str(tiny_onnx_model),
            "--no-progress"]
    for _ in range(3):
        assert main(args) == 0
    assert "0 written, 3 skipped (already done), 0 failed, 3 total" in capsys.readouterr().err
    assert sorted(_files(inputs / "masks")) == ["astronaut.png", "coffee.png", "sub/chelsea.png"]


def test_a_rerun_with_other_options_does_not_skip_files_made_with_the_old(tiny_onnx_model: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    common = [str(inputs), "--out", str(out), "--local", str(tiny_onnx_model), "--no-progress"]
    assert main([*common, "--output", "labels"]) == 0
    labels = _files(out)
    capsys.readouterr()
    assert main([*common, "--output", "color"]) == 2  # not "0 written, 3 skipped" over label maps
    err = capsys.readouterr().err
    assert "--output labels then, color now" in err and "--overwrite" in err
    assert _files(out) == labels
    assert main([*common, "--output", "color", "--overwrite"]) == 0
    assert Image.open(out / "coffee.png").mode == "RGB"
    capsys.readouterr()
    assert main([*common, "--output", "color"]) == 0  # the same options again: resume
    assert "0 written, 3 skipped (already done)" in capsys.readouterr().err
    # Options count as much as the kind: another --alpha is another overlay.
    overlays = tmp_path / "overlays"
    assert main([*common[:2], str(overlays), *common[3:], "--output", "overlay", "--alpha", "0.2"]) == 0
    assert main([*common[:2], str(overlays), *common[3:], "--output", "overlay", "--alpha", "0.9"]) == 2
    assert "--alpha 0.2 then, 0.9 now" in capsys.readouterr().err
    assert json.loads((overlays / RUN_FILE).read_text())["alpha"] == 0.2


def test_crf_refines_every_file_alike_on_the_server_and_locally(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--crf` asks for `crf=true`: the server's and the local run's files are the same, and differ from the plain
    masks (the rule model's boundaries, which the CRF moves); the flag counts as an option, and a folder written
    without it resumes without it. The dev install carries the crf extra."""
    assert crf.available()
    model = make_rule_model(tmp_path / "rule.onnx")
    write_photos(tmp_path / "in")
    plain, remote, local = tmp_path / "plain", tmp_path / "remote", tmp_path / "local"
    common = [str(tmp_path / "in"), "--output", "labels", "--no-progress"]
    with running_server(model) as server_url:
        assert main([*common, "--out", str(plain), "--server", server_url]) == 0
        assert main([*common, "--out", str(remote), "--server", server_url, "--crf"]) == 0
        assert main([*common, "--out", str(local), "--local", str(model), "--crf"]) == 0
        assert _files(remote) == _files(local) and len(_files(remote)) == 3
        assert _files(remote) != _files(plain)
        capsys.readouterr()
        assert main([*common, "--out", str(remote), "--server", server_url]) == 2  # refined files, plain asked for
        assert "--crf True then, default now" in capsys.readouterr().err
        assert main([*common, "--out", str(plain), "--server", server_url]) == 0
        assert "0 written, 3 skipped" in capsys.readouterr().err
    assert "crf" not in json.loads((plain / RUN_FILE).read_text())  # as recorded before the flag existed


def test_ctrl_c_stops_after_the_files_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for index in range(40):
        (inputs / f"f{index:02}.png").write_bytes(b"not decoded by the stub")
    calls = itertools.count()
    handled = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:  # Python's own handler, which says when it ran
        handled.set()
        raise KeyboardInterrupt

    class Slow:
        def segment(self, data: bytes, output: str, **options: object) -> SegmentResult:
            index = next(calls)
            if index == 2:  # the user presses Ctrl-C while the third file is in progress
                # The kernel may hand a process's SIGINT to any thread that does not block it; here only this one
                # does not, the worst case: Python runs the handler on the main thread only once that wakes.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                os.kill(os.getpid(), signal.SIGINT)
            if index >= 2:
                # In progress until the main thread has taken the signal, and a moment more for it to drop the
                # queued files: on a loaded machine the signal can wait for the main thread far longer than a
                # file takes (fixed sleeps saw a fifth file written).
                handled.wait(10)
                time.sleep(0.3)
            else:
                time.sleep(0.1)
            return SegmentResult(output, b"\x89PNG stub", "image/png", None, None)

    monkeypatch.setattr(batch, "_backend", lambda args: (Slow(), None))
    monkeypatch.setattr(batch, "_model", lambda backend, client: {"name": "stub"})  # no model file behind Slow
    previous = signal.signal(signal.SIGINT, on_sigint)
    # The pool's threads inherit this mask; the third file's thread unblocks the signal for itself.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    started = time.monotonic()
    try:
        status = main([str(inputs), "--out", str(out), "--local", "stub.onnx", "-j", "2", "--no-progress"])
    except KeyboardInterrupt:  # the old behaviour: every queued file done, then a traceback
        status = None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.signal(signal.SIGINT, previous)
    assert status == 130 and handled.is_set()
    assert time.monotonic() - started < 4.0  # 40 files on 2 threads would take 2 s more than the interrupted run
    written = _files(out)
    assert 2 <= len(written) <= 4 and set(written.values()) == {b"\x89PNG stub"}
    assert not list(out.glob("*.part"))
    err = capsys.readouterr().err
    assert f"{len(written)} written, 0 skipped (already done), 0 failed, 40 total; interrupted, " \
           f"{40 - len(written)} not done" in err


def test_an_overlay_too_large_for_jpeg_is_stored_as_png(tiny_onnx_model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    Image.new("RGB", (JPEG_MAX_SIDE + 1, 4), (90, 120, 200)).save(inputs / "strip.png")
    args = [str(inputs), "--out", str(out), "--output", "overlay", "--local", str(tiny_onnx_model), "--no-progress"]
    assert main(args) == 0
    written = _files(out)
    assert sorted(written) == ["astronaut.jpg", "coffee.jpg", "strip.png", "sub/chelsea.jpg"]
    assert written["strip.png"].startswith(b"\x89PNG") and written["coffee.jpg"].startswith(b"\xff\xd8")
    assert Image.open(out / "strip.png").size == (JPEG_MAX_SIDE + 1, 4)
    capsys.readouterr()
    assert main(args) == 0  # resume finds it under its real suffix
    assert "0 written, 4 skipped (already done)" in capsys.readouterr().err


def test_a_refused_api_key_stops_the_run_before_any_file(keyed_server_url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """One line and exit 2, rather than every file failing on its own with the same 401; the right key runs."""
    write_photos(tmp_path / "in")
    common = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--server", keyed_server_url, "--no-progress"]
    assert main([*common, "--api-key", "wrong"]) == 2
    err = capsys.readouterr().err
    assert "refused the API key" in err and "FAILED" not in err, err
    assert not (tmp_path / "out").exists() or not _files(tmp_path / "out")
    assert main([*common, "--api-key", API_KEY]) == 0
    assert len(_files(tmp_path / "out")) == 3
