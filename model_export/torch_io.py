"""Reading weight files: one `torch.load` with an explicit trust decision, one file hash, and one report of how
a state_dict fails to fit a model. Every loader of `model_export` goes through these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.core.engine import file_sha256

MAX_LISTED = 8  # names shown per kind of problem; the rest are counted


def load_torch_file(path: str | Path, *, trusted: bool) -> Any:
    """`torch.load` a file onto the CPU.

    `trusted=False` (`weights_only`): tensors and plain containers only; anything else raises
    `pickle.UnpicklingError` without running the file's code. Use it for every file from outside (torchvision
    `.pth` downloads, state_dicts users point at). `trusted=True` unpickles everything, which runs code the
    file names: only for the training checkpoints this project writes (they carry numpy and Python RNG states
    that `weights_only` refuses).
    """
    return torch.load(path, map_location="cpu", weights_only=not trusted)


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
