"""The one torch.load (it never runs a file's code), the file hash, the state_dict mismatch report, and the
weight-source table they serve."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from model_export.architectures import ARCHITECTURES
from model_export.catalog import ARCH_INPUT_SIZES, ARCH_NAMES, PUBLISHED, WEIGHT_SOURCES, default_input_size
from model_export.cli import CliError, command_line_message
from model_export.errors import OPTION, ModelExportError
from model_export.torch_io import UnsafeFileError, compare_state_dicts, listing, load_torch_file, sha256_file
from service.core.contract import VOC_CLASSES
from service.core.engine import file_sha256


def leave_mark(path: str) -> str:
    """What the hostile pickle below calls when it is loaded: it writes a file the test can see."""
    Path(path).write_text("code ran")
    return path


class _Sneaky:
    """Unpickling this runs code (`leave_mark`)."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return (leave_mark, (str(self.mark),))


def test_no_load_runs_a_files_code(tmp_path: Path) -> None:
    path, mark = tmp_path / "evil.pt", tmp_path / "mark"
    torch.save({"weight": torch.ones(2), "payload": _Sneaky(mark)}, path)
    with pytest.raises(UnsafeFileError) as refused:
        load_torch_file(path)
    assert not mark.exists()
    assert any("leave_mark" in name for name in refused.value.names), refused.value.names
    # Not even when other globals are allowed: only those are.
    with pytest.raises(UnsafeFileError):
        load_torch_file(path, allowed=[torch.Size])
    assert not mark.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.arange(3.0)}, plain)
    assert torch.equal(load_torch_file(plain)["weight"], torch.arange(3.0))


def test_sha256_file_is_hashlibs_digest(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 9000  # over one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()  # a str path, as callers pass


def test_both_halves_hash_files_with_one_function() -> None:
    """The export side's file hash is the serving side's: the model's sha256 in the metadata and the one the
    service reports come from one implementation."""
    assert sha256_file is file_sha256


def test_state_dict_mismatch_names_every_problem() -> None:
    expected = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}
    given = {"a.weight": torch.zeros(3, 2), "b.weight": torch.zeros(4), "extra": torch.zeros(1)}
    mismatch = compare_state_dicts(expected, given)
    assert mismatch.missing == ["c.bias"] and mismatch.unexpected == ["extra"]
    assert mismatch.shapes == ["a.weight (3, 2) vs model (2, 3)"]
    assert mismatch.describe() == ("1 missing keys: c.bias; 1 unexpected keys: extra; "
                                   "1 shape mismatches: a.weight (3, 2) vs model (2, 3)")
    assert not compare_state_dicts(expected, expected)
    assert listing([str(i) for i in range(10)], 3) == "0, 1, 2, ... and 7 more"


def test_weight_sources_are_complete_and_fit_their_architectures() -> None:
    assert set(ARCH_NAMES) == set(ARCHITECTURES) and tuple(ARCHITECTURES) == ARCH_NAMES
    for name, spec in ARCHITECTURES.items():
        assert spec.default_input_size == ARCH_INPUT_SIZES[name] == default_input_size(name)
    for name, source in WEIGHT_SOURCES.items():
        assert source.name == name and source.arch in ARCH_NAMES
        assert source.classes == VOC_CLASSES and source.preprocessing == "imagenet" and source.input_size > 0
        assert PUBLISHED[name] == source.file and source.file.endswith(f"-{source.sha256_prefix}.pth")
        assert source.url("https://mirror.example/m/") == f"https://mirror.example/m/{source.file}"
    with pytest.raises(ValueError, match="unknown arch"):
        default_input_size("no_such_arch")


def test_domain_errors_name_their_parameter_and_the_command_line_its_flag() -> None:
    error = ModelExportError(f"{OPTION} must be positive, got 0", option="calibration_count")
    assert str(error) == "calibration_count must be positive, got 0" and error.option == "calibration_count"
    assert command_line_message(error) == "--calibration-count must be positive, got 0"
    # A message that does not name its parameter reads the same everywhere (no flag is added).
    unnamed = ModelExportError("calibration directory d holds no JPEG or PNG images", option="calibration_dir")
    assert command_line_message(unnamed) == str(unnamed) == "calibration directory d holds no JPEG or PNG images"
    assert command_line_message(ModelExportError("plain")) == "plain"
    assert command_line_message(CliError("--random-init needs --arch")) == "--random-init needs --arch"
