"""The sweep of the shared folders that have no lock file to ask: a supervisor killed with SIGKILL between making
its folder and naming its lock file, and an earlier release's `segment-XXXXXXXX` folders (tempfile's names, holding
`metrics`, `results` and later `slots`, and no lock file), were never removed: results up to
`SEGMENT_RESULT_CACHE_BYTES` each, in /dev/shm, until a reboot. They go once untouched for a minute and held by
nobody; never a folder being made, nor one whose processes still write to it, nor anything else called segment-*.

The folders are made by hand as those servers left them; the processes that hold or write to them are real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.worker_shared import GRACE_S, MAKING, sweep
from testkit.server import ServerProcess
from tests.service.worker_checks import OPTIONS

HOLDER = """import fcntl, mmap, sys, time
f = open(sys.argv[1], "rb+")
if sys.argv[2] == "flock":
    fcntl.flock(f, fcntl.LOCK_SH)  # as a supervisor holds its lock file while it names it
else:
    m = mmap.mmap(f.fileno(), 0)  # as prometheus-client's multiprocess mode keeps a worker's metric file
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait(10)


def hold(holders: list[subprocess.Popen], path: Path, how: str) -> subprocess.Popen:
    """A live process that holds `path` open (`flock`: locked shared; `write`: open for writing and mapped)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), how], stdout=subprocess.PIPE, text=True)
    holders.append(process)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def aged(folder: Path, seconds: float = GRACE_S * 2) -> Path:
    """Date back every folder in `folder` by `seconds`, as if nothing had been added to it since."""
    then = time.time() - seconds
    for top, _, _ in os.walk(folder):
        os.utime(top, (then, then))
    return folder


def folder(parent: Path, name: str, *entries: str) -> Path:
    """`parent/name` (0700, as tempfile makes it) with `entries`: a name ending in '/' is a folder, else a file."""
    made = parent / name
    made.mkdir(mode=0o700)
    for entry in entries:
        if entry.endswith("/"):
            (made / entry).mkdir(parents=True)
        else:
            (made / entry).parent.mkdir(parents=True, exist_ok=True)
            (made / entry).write_bytes(b"\0" * 4096)
    return made


def test_a_folder_left_before_its_lock_file_had_its_name_goes_once_a_minute_old(tmp_path: Path, holders) -> None:
    empty = aged(folder(tmp_path, "segment-workers-k1lled00"))  # killed right after making it
    making = aged(folder(tmp_path, "segment-workers-k1lled01", MAKING))  # killed before naming its lock
    young = folder(tmp_path, "segment-workers-mak1ng00", MAKING)  # a supervisor naming its lock now
    stalled = aged(folder(tmp_path, "segment-workers-mak1ng01", MAKING))  # one that still holds it, however late
    hold(holders, stalled / MAKING, "flock")
    unlocked = aged(folder(tmp_path, "segment-workers-l1ve0000", "metrics/", "results/", "slots/"))
    assert sorted(sweep(tmp_path)) == [empty, making]
    assert not empty.exists() and not making.exists()
    # Never one in use or that may be: its lock being named, or a folder in use whose lock file someone removed.
    assert young.is_dir() and stalled.is_dir() and unlocked.is_dir()
    holder = holders.pop()
    holder.kill()
    holder.wait(10)
    assert sweep(tmp_path) == [stalled]  # its holder is gone
    assert young.is_dir() and unlocked.is_dir()


def test_an_earlier_releases_folder_goes_once_nobody_writes_to_it(tmp_path: Path, holders) -> None:
    layout = ("metrics/counter_101.db", "metrics/gauge_livesum_101.db", "results/101/abc.labels.png", "slots/slot-0")
    dead = aged(folder(tmp_path, "segment-d3ad_0k0", *layout))
    first = aged(folder(tmp_path, "segment-f1rst000", "metrics/", "results/"))  # the first release: no slots
    live = aged(folder(tmp_path, "segment-l1vel1ve", *layout))  # an idle server's: nothing added for minutes
    writer = hold(holders, live / "metrics" / "counter_101.db", "write")
    fresh = folder(tmp_path, "segment-fr3shfr3", *layout)
    others = [aged(folder(tmp_path, name, *entries)) for name, entries in (
        ("segment-3xtra000", (*layout, "notes.txt")),  # something of its own inside
        ("segment-n0resu1t", ("metrics/",)),  # not the shape
        ("segment-too-long-name", layout),  # not tempfile's name
        ("segment-workers", layout),
    )]
    assert sorted(sweep(tmp_path)) == sorted([dead, first])
    assert live.is_dir() and fresh.is_dir() and all(other.is_dir() for other in others)
    writer.kill()
    writer.wait(10)
    assert sweep(tmp_path) == [live]  # its last writer is gone
    assert fresh.is_dir() and all(other.is_dir() for other in others)


def test_a_starting_server_sweeps_both_kinds_from_the_temporary_directory(rule_model: Path, tmp_path: Path) -> None:
    unnamed = aged(folder(tmp_path, "segment-workers-k1lled02", MAKING))
    earlier = aged(folder(tmp_path, "segment-d3ad_0k1", "metrics/counter_7.db", "results/", "slots/"))
    # The server's temporary directory is this test's: its own folder goes there too where /dev/shm lacks room.
    with ServerProcess(rule_model, TMPDIR=str(tmp_path), **OPTIONS) as server:
        server.wait_ready(120)
        assert not unnamed.exists() and not earlier.exists(), server.log
        assert f"removed {unnamed}" in server.log and f"removed {earlier}" in server.log, server.log
        assert server.terminate() == 0, server.log
