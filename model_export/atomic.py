"""Writing a file the user names all at once: the work goes to a hidden temporary file beside it, which replaces
it only when complete, so an interrupt (Ctrl-C) or a failed check leaves the previous file as it was."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL = ".partial-"  # in every temporary file's name: `.model.partial-1a2b3c4d.onnx` beside `model.onnx`


def partial_path(path: Path) -> Path:
    """A hidden, unused name beside `path` that keeps its suffix: writers that infer the format from the
    extension (`onnx.save`) write the same format to it."""
    return path.with_name(f".{path.stem}{PARTIAL}{secrets.token_hex(4)}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder to write the whole file to; when the block ends normally it
    replaces `path` (`os.replace`: readers see the old file or the new one, never a part). On any exception,
    KeyboardInterrupt included, the temporary file is removed and `path` is left untouched.

    A symlinked `path` keeps its link: the file it points to is replaced. An existing file's permission bits
    carry over, as when it was overwritten in place."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(target)
    try:
        yield tmp
        if target.exists():
            shutil.copymode(target, tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave an empty file behind it
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # already gone after the replace


def leftover_partials(folder: str | Path) -> list[Path]:
    """Temporary files `atomic_path` left in `folder` (none, unless the process was killed outright)."""
    return sorted(Path(folder).glob(f".*{PARTIAL}*"))
