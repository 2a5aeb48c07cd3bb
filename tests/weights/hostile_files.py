"""Weights files whose pickle runs code when fully unpickled: what every loader must refuse without running it.
Each payload writes `MARK_TEXT` into a marker file when its code runs, so a test sees whether it did."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

MARK_TEXT = "code ran"


class ExecPayload:
    """Unpickled, it calls `builtins.exec` on code that writes the marker (the audit's reproducer)."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.mark)!r}, 'w').write({MARK_TEXT!r})",))


class MethodPayload:
    """Unpickled, it calls a bound method of an ordinary class (`getattr(PosixPath(mark), 'write_text')`): no
    builtin code execution, still code the file chose."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.mark).write_text, (MARK_TEXT,))


PAYLOADS = {"exec": ExecPayload, "method": MethodPayload}


def state_dict_with_payload(path: Path, payload: object) -> Path:
    """A small state_dict file with the payload beside its tensors (as /tmp/audit_export/evil_pickle.py)."""
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": payload}, path)
    return path


def checkpoint_with_payload(path: Path, checkpoint: dict[str, Any], payload: object) -> Path:
    """A well-formed training checkpoint (its every key, a fitting state_dict) whose `args` carry the payload:
    checking the format after unpickling would be too late."""
    torch.save({**checkpoint, "args": {**checkpoint.get("args", {}), "note": payload}}, path)
    return path


def respell_numpy_module(src: Path, dst: Path, new: bytes = b"numpy.core.multiarray") -> Path:
    """`src` as numpy 1.x would have written it: its pickle names numpy's array rebuilder by that numpy's module
    (`numpy.core.multiarray`; numpy 2 writes `numpy._core.multiarray`). Every other record is copied as is."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", new + b"\n")
            zout.writestr(info, data)
    return dst
