"""A file the user names (often the served model) is replaced only by a complete one: Ctrl-C during
`segment-export export`, or a check that fails after torch wrote its graph, leaves the previous file as it was and
no temporary file beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from model_export.atomic import atomic_path, leftover_partials
from model_export.export import read_metadata

REPO = Path(__file__).resolve().parents[2]


def _complete(path: Path) -> bool:
    """Whether `path` is a finished export: contract metadata, and it passes the full ONNX check."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return {"classes", "arch", "confidence"} <= {p.key for p in proto.metadata_props}


def _interrupt_export(out: Path, delay: float) -> tuple[int, str]:
    """Run a real `segment-export export -o out`; SIGINT it `delay` seconds after its first write shows (a
    temporary file beside `out`, or `out` itself changing). Its exit status and standard error."""
    before = out.stat()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_export.cli", "export", "--random-init", "--arch", "deeplabv3_thin",
         "--num-classes", "5", "-o", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:
            now = out.stat()
            if leftover_partials(out.parent) or (now.st_mtime_ns, now.st_size) != (before.st_mtime_ns, before.st_size):
                time.sleep(delay)
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.002)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.08])
def test_ctrl_c_during_export_keeps_the_served_model(delay: float, tiny_onnx_model: Path, tmp_path: Path) -> None:
    served = tmp_path / "served.onnx"
    shutil.copyfile(tiny_onnx_model, served)
    original = served.read_bytes()
    status, err = _interrupt_export(served, delay)
    # Either the interrupt came first (the old file, byte for byte) or the export did (a finished new file).
    kept = served.read_bytes() == original
    assert kept or _complete(served)
    if kept and status != 0:  # interrupted while it worked: one line, the shell's status for SIGINT, no traceback
        assert status == 130 and "segment-export export: interrupted" in err and "Traceback" not in err, err
    assert leftover_partials(tmp_path) == []


def test_a_failed_check_after_torch_wrote_keeps_the_old_file(tiny_onnx_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's graph is written first and checked after: a failure there must not leave torch's bare graph."""
    import torch

    from model_export.architectures import build_model
    from model_export.export import build_metadata, export_onnx

    served = tmp_path / "served.onnx"
    shutil.copyfile(tiny_onnx_model, served)
    original = served.read_bytes()
    model = build_model("deeplabv3_thin", num_classes=3, base_width=8, head_channels=16).eval()
    meta = build_metadata(model, num_classes=3, input_size=64, source="tests")

    def refuse(*args: object, **kwargs: object) -> None:
        raise onnx.checker.ValidationError("injected: the check failed")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    with pytest.raises(onnx.checker.ValidationError, match="injected"), torch.no_grad():
        export_onnx(model, served, meta)
    assert served.read_bytes() == original
    assert leftover_partials(tmp_path) == []
    monkeypatch.undo()
    export_onnx(model, served, meta)  # and once it passes, the new model replaces the old
    assert read_metadata(served).classes == meta.classes and leftover_partials(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_atomic_path_removes_its_draft_on_any_failure(error: BaseException, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(type(error)), atomic_path(target) as draft:
        draft.write_bytes(b"half of the new")
        raise error
    assert target.read_bytes() == b"old" and leftover_partials(tmp_path) == []


def test_atomic_path_keeps_permissions_and_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "models" / "model.onnx"
    real.parent.mkdir()
    real.write_bytes(b"old")
    real.chmod(0o640)
    link = tmp_path / "current.onnx"
    link.symlink_to(real)
    with atomic_path(link) as draft:
        assert draft.parent == real.parent and draft.name.startswith(".")  # hidden, beside the real file
        draft.write_bytes(b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert real.stat().st_mode & 0o777 == 0o640
    assert leftover_partials(real.parent) == []
