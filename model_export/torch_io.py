"""Reading weight files: one `torch.load` that never runs a file's code, one file hash, and one report of how
a state_dict fails to fit a model. Every loader of `model_export` goes through these."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.core.engine import file_sha256

MAX_LISTED = 8  # names shown per kind of problem; the rest are counted


# An object a file may name beside tensors and plain containers, or (object, the dotted name a file spells it by).
SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]


class UnsafeFileError(pickle.UnpicklingError):
    """A complete pickle that names globals beyond tensors, plain containers and those allowed: loading it would
    call them (any code), so it was refused before any was called. `names` lists them."""

    def __init__(self, path: str | Path, names: Sequence[str]) -> None:
        self.path, self.names = Path(path), list(names)
        self.reason = (f"loading it would call {listing(self.names)}, code beyond tensors and plain values; refused "
                       "without running it")
        super().__init__(f"{path}: {self.reason}")


class NotTorchFileError(pickle.UnpicklingError):
    """A file torch cannot read as a checkpoint at all: neither the zip archive `torch.save` writes nor a legacy
    pickle (a JSON or text file, random bytes, an empty file). `reason` says so without torch's advice to retry
    with `weights_only=False`, which would run a pickle's code and cannot help a file that is no pickle."""

    def __init__(self, path: str | Path, detail: str) -> None:
        self.path = Path(path)
        self.reason = f"not a readable PyTorch checkpoint (zip or legacy pickle): {detail}"
        super().__init__(f"{path} is {self.reason}")


def _unpickler_detail(exc: BaseException) -> str:
    """What torch's `weights_only` unpickler found wrong (`Unsupported operand 91`), without its advice."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(exc), re.DOTALL)
    detail = found.group(1).strip() if found else error_line(exc)
    if detail.startswith("Unsupported operand"):  # a byte no pickle starts with: JSON, text, another format
        return f"its bytes are no pickle (torch: {detail})"
    return detail


def load_torch_file(path: str | Path, *, allowed: Sequence[SafeGlobal] = ()) -> Any:
    """`torch.load` a file onto the CPU with torch's `weights_only` unpickler: tensors, plain containers and the
    `allowed` globals (a training checkpoint's numpy RNG state) are rebuilt; nothing else a file names is ever
    called. A file naming anything else raises `UnsafeFileError` listing it; one that is no checkpoint at all
    (not a pickle, or empty) `NotTorchFileError`; other corrupt files raise what torch raises (RuntimeError,
    UnpicklingError...)."""
    with torch.serialization.safe_globals(list(allowed)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except EOFError:  # torch's message is empty
            raise NotTorchFileError(path, "it ends before the first record (empty or cut short)") from None
        except pickle.UnpicklingError as exc:
            names = _refused_names(path, exc)
            if names:
                raise UnsafeFileError(path, names) from None
            raise NotTorchFileError(path, _unpickler_detail(exc)) from None


def _refused_names(path: str | Path, exc: pickle.UnpicklingError) -> list[str]:
    """What the `weights_only` loader refused to call: every global the file names that is not allowed (in the
    `safe_globals` context of the load), read from the pickle's opcodes without running them, else the one
    torch's error names (a file in torch's pre-zip format; a type built from an allowed global, such as a numpy
    dtype's class, whose `__setstate__` would run). Empty when the error is of another kind (a corrupt file)."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint (ValueError), or one too corrupt to list
        names = []
    if names:
        return names
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)|but got <class '([^']+)'>", str(exc))
    return [next(name for name in found.groups() if name)] if found else []


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when empty), for a one-line error; a line over
    `limit` characters ends at its last full sentence within them (torch's explain at length)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, limit)
    return line[:end + 1] if end > 0 else line[:limit]


# Hex sha256 of a file: the serving half's own (hashlib.file_digest), so the digest in a model's metadata and the
# one the service reports come from one function. model_export may import the service's core; the reverse may not
# (the service never imports torch).
sha256_file = file_sha256


def listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """`a, b, c, ... and 5 more`: a long list of names, summarised for one error line."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


@dataclass
class Mismatch:
    """What keeps weights from fitting a model: names it lacks, names it does not know, shapes that differ."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def describe(self, noun: str = "keys", unexpected_word: str = "unexpected", limit: int = MAX_LISTED) -> str:
        """`3 missing keys: ...; 1 unexpected keys: ...; 2 shape mismatches: ...` (empty parts left out)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing {noun}: {listing(self.missing, limit)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} {unexpected_word} {noun}: {listing(self.unexpected, limit)}")
        if self.shapes:
            parts.append(f"{len(self.shapes)} shape mismatches: {listing(self.shapes, limit)}")
        return "; ".join(parts)


def compare_state_dicts(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> Mismatch:
    """How `given` differs from the model's own `expected` state_dict (sorted names; shapes as `key (a) vs
    model (b)`)."""
    return Mismatch(
        missing=sorted(k for k in expected if k not in given),
        unexpected=sorted(k for k in given if k not in expected),
        shapes=sorted(f"{k} {tuple(given[k].shape)} vs model {tuple(v.shape)}"
                      for k, v in expected.items() if k in given and given[k].shape != v.shape),
    )
