"""`segment`'s writes: a legal name of up to 255 bytes is written (before: "File name too long" after its inference,
as the temporary name added ".part" to it), with the mode open() gives, and a write that fails leaves no temporary
file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from clients.batch import main
from clients.batch_outputs import write_atomic
from testkit.photos import photo

NAME_MAX = 255  # bytes, on Linux's filesystems (ext4, xfs, btrfs, tmpfs) as on APFS and NTFS


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_255_byte_name_is_written(server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    name = "a" * (NAME_MAX - 4) + ".jpg"
    accented = "é写真" * 31 + "abc.png"  # 255 bytes in UTF-8, 100 characters
    assert len(name.encode()) == len(accented.encode()) == NAME_MAX
    for file in (name, accented):
        Image.fromarray(photo("coffee.png", (48, 40))).save(inputs / file)
    assert main([str(inputs), "--out", str(out), "--output", "labels", "--server", server_url, "--no-progress"]) == 0
    assert "2 written, 0 skipped (already done), 0 failed, 2 total" in capsys.readouterr().err
    written = out / ("a" * (NAME_MAX - 4) + ".png")
    assert Image.open(written).size == (48, 40) and Image.open(out / accented).size == (48, 40)
    assert sorted(p.name for p in out.iterdir()) == sorted([".segment-run.json", written.name, accented])
    assert written.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes files, not tempfile's 0600


def test_write_atomic_takes_a_name_of_the_longest_length(tmp_path: Path) -> None:
    target = tmp_path / ("b" * NAME_MAX)
    write_atomic(target, b"data")
    assert target.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_write_leaves_no_temporary_file(server_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An output name taken by a folder: the rename fails after the data was written. Before: the folder counted as
    a finished output (skipped), and a failed write left its `.part` file."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for file in ("coffee.jpg", "other.jpg"):
        Image.fromarray(photo("coffee.png", (48, 40))).save(inputs / file)
    (out / "coffee.png").mkdir(parents=True)
    (out / "coffee.png" / "keep.txt").write_text("not an output")
    assert main([str(inputs), "--out", str(out), "--output", "labels", "--server", server_url, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 written, 0 skipped (already done), 1 failed, 2 total" in err
    assert f"FAILED {(inputs / 'coffee.jpg').resolve()}: write_error: " in err
    assert sorted(p.name for p in out.iterdir()) == [".segment-run.json", "coffee.png", "other.png"]
    assert [p.name for p in (out / "coffee.png").iterdir()] == ["keep.txt"]
