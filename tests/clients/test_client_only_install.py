"""A client-only install (`pip install '.[client]'`) asked for what needs the serve extra: `segment --local` and
`segment-webcam` end with one line naming the extra to install, exit 2, no traceback.

The installed console scripts run in a fresh interpreter in which the serve extra's modules cannot be imported
(`sys.modules[name] = None` makes Python refuse them, as on a machine without them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# Top-level modules of the `core` extra (which `serve` includes) that the `client` extra does not install.
SERVE_ONLY_MODULES = ("onnxruntime", "cv2", "simplejpeg", "zlib_ng", "shapely")
BLOCKED_RUN = ("import runpy, sys\n"
               "for name in {modules!r}: sys.modules[name] = None\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_without_serve_extra(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script `script` of this venv, as `pip install` wrote it, on a client-only install."""
    path = Path(sys.executable).parent / script
    assert path.is_file(), f"{path} missing: install the project (pip install -e .)"
    code = BLOCKED_RUN.format(modules=SERVE_ONLY_MODULES)
    return subprocess.run([sys.executable, "-c", code, str(path), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def assert_names_the_serve_extra(out: subprocess.CompletedProcess[str], prog: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"{prog}: ") and "needs the serve extra" in line, line
    module = line.split("module '", 1)[1].split("'", 1)[0]
    assert module in SERVE_ONLY_MODULES, line
    # The install command is the README's own, so that it can be pasted from either.
    command = line.split(": ")[-1]
    assert command == "pip install '.[serve]'", line
    assert command in (REPO / "README.md").read_text()


def test_segment_local_names_the_serve_extra(tmp_path: Path, tiny_onnx_model: Path) -> None:
    Image.new("RGB", (16, 12), (200, 30, 30)).save(tmp_path / "red.png")
    out = run_without_serve_extra("segment", str(tmp_path / "red.png"), "--out", str(tmp_path / "out"),
                                  "--local", str(tiny_onnx_model), "--no-progress")
    assert_names_the_serve_extra(out, "segment")
    assert not (tmp_path / "out").exists(), "nothing is written when the run cannot start"


def test_segment_webcam_names_the_serve_extra(tmp_path: Path) -> None:
    out = run_without_serve_extra("segment-webcam", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "o.mkv"))
    assert_names_the_serve_extra(out, "segment-webcam")


def test_segment_webcam_help_works_without_the_serve_extra() -> None:
    out = run_without_serve_extra("segment-webcam", "--help")
    assert out.returncode == 0, out.stderr
    assert "--local" in out.stdout and "--server" in out.stdout
