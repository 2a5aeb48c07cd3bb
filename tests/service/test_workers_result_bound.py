"""The results cache's bound (`SEGMENT_RESULT_CACHE_BYTES`) over several workers, as SIGTTIN and SIGTTOU change
their number: each worker's share follows the count, so the files of all of them together stay within the bound,
and fewer workers use the room the others left."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.results_shared import SharedResultsCache, trim_worker_results
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes
from tests.service.worker_checks import wait_for, worker_pids
from tests.service.worker_helpers import worker_environ

BOUND = 600_000  # about eight results of the upload below


def noise_png() -> bytes:
    """An upload whose PNG does not compress (about 58 KB), so that a few results fill a share."""
    return png_bytes(np.random.default_rng(7).integers(0, 256, (120, 160, 3), dtype=np.uint8))


def results_dir(pid: int) -> Path:
    return Path(worker_environ(pid)["SEGMENT_RESULTS_DIR"])


def held(server: ServerProcess, results: Path) -> dict[int, int]:
    """Bytes of result files per worker folder, by the worker's pid (the folders are named after the slots)."""
    slots = {f"slot-{worker_environ(pid)['SEGMENT_WORKER_SLOT']}": pid for pid in worker_pids(server)}
    out: dict[int, int] = {}
    for folder in results.iterdir():  # a folder of no live worker's slot counts as -1 (a leak, for the asserts)
        size = sum(p.stat().st_size for p in folder.iterdir() if not p.name.startswith("."))
        out[slots.get(folder.name, -1)] = out.get(slots.get(folder.name, -1), 0) + size
    return out


def fill(server: ServerProcess, results: Path, pids: set[int], size: int, timeout: float = 90) -> dict[int, int]:
    """Store results on new connections (the kernel hands each to one worker) until each of `pids` holds its
    share, as the bound divided by their number allows: no further result fits without evicting one."""
    share = BOUND // len(pids)
    body = noise_png()
    deadline = time.monotonic() + timeout
    while True:
        now = held(server, results)
        if all(now.get(pid, 0) > share - size for pid in pids):
            return now
        assert time.monotonic() < deadline, (now, share, server.log)
        r = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                       headers={"content-type": "image/png"}, timeout=30)
        assert r.status_code == 200 and "X-Result-ID" in r.headers, r.text


def test_the_bound_holds_for_all_workers_together_as_their_number_changes(rule_model: Path) -> None:
    with ServerProcess(rule_model, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="1",
                       SEGMENT_RESULT_CACHE_BYTES=str(BOUND), SEGMENT_RESULT_TTL_S="600") as server:
        server.wait_ready(120)
        first = worker_pids(server)
        assert len(first) == 2
        results = results_dir(min(first))
        httpx.post(f"{server.url}/segment", content=noise_png(), headers={"content-type": "image/png"}, timeout=30)
        size = max(held(server, results).values())  # one result's file
        assert 6 * size < BOUND < 12 * size
        fill(server, results, first, size)
        assert sum(held(server, results).values()) <= BOUND

        server.proc.send_signal(signal.SIGTTIN)  # a third worker
        wait_for(lambda: len(worker_pids(server)) == 3, "no third worker", server)
        three = worker_pids(server)
        server.worker_pids.clear()
        server.env["SEGMENT_WORKERS"] = "3"  # what `wait_ready` counts
        server.wait_ready(120)
        # At once, not only after each worker's next store: the two that filled their halves hold a third each.
        assert all(size_held <= BOUND // 3 for size_held in held(server, results).values()), held(server, results)
        now = fill(server, results, three, size)
        assert sum(now.values()) <= BOUND, now  # three full shares, the bound in all
        assert all(size_held <= BOUND // 3 for size_held in now.values()), now

        for count in (2, 1):  # SIGTTOU: the last worker goes, the others may take its room
            server.proc.send_signal(signal.SIGTTOU)
            wait_for(lambda count=count: len(worker_pids(server)) == count, f"not {count} workers", server)
        (last,) = worker_pids(server)
        now = fill(server, results, {last}, size)
        assert set(now) == {last}  # the folders of the slots dropped are gone (none counts as -1)
        assert BOUND // 2 < now[last] <= BOUND, now  # the whole bound, not the half it started with
        assert server.terminate() == 0


def test_a_workers_share_follows_their_number_and_a_trim_keeps_the_newest(tmp_path: Path) -> None:
    """The store on its own: the share asked at each store, and the supervisor's trim when the number grows."""
    workers = [2]
    cache = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=5_000, owner="101")
    cache.follow(10_000, lambda: workers[0])
    rng = np.random.default_rng(0)

    def store(count: int) -> list[str]:
        ids = [f"r{rng.integers(1 << 40)}" for _ in range(count)]
        for rid in ids:
            assert cache.put(rid, rng.integers(0, 7, 1000, dtype=np.uint8), rng.bytes(1000))
        return ids

    def folder() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in (tmp_path / "101").iterdir()}

    store(6)
    size = max(folder().values())
    assert 5_000 - size < sum(folder().values()) <= 5_000  # half of 10 000
    workers[0] = 1
    newest = store(6)
    assert 10_000 - size < sum(folder().values()) <= 10_000  # all of it
    workers[0] = 4
    assert trim_worker_results(tmp_path, 10_000 // 4) > 0  # at once, before this worker stores again
    assert sum(folder().values()) <= 2_500 and set(folder()) <= set(newest[-2:])
    store(3)  # its own bookkeeping still counted what the trim removed: it keeps less, never more
    assert 2_500 - size < sum(folder().values()) <= 2_500


def test_a_file_evicted_while_the_trim_lists_the_folder_leaves_the_rest_trimmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner may evict a file between the trim's listing and its look at that file: the folder's other files
    are still trimmed to the share (the whole folder was skipped, keeping its larger share)."""
    folder = tmp_path / "101"
    folder.mkdir()
    for n in range(6):
        (folder / f"r{n}").write_bytes(bytes(1000))
        os.utime(folder / f"r{n}", (n, n))  # oldest first
    real_scandir = os.scandir

    @contextlib.contextmanager
    def listed_then_evicted(path: Any) -> Iterator[list[os.DirEntry]]:
        with real_scandir(path) as listing:
            entries = list(listing)
        (folder / "r0").unlink()  # listed, then evicted by its owner: its entry is stale
        yield entries

    monkeypatch.setattr(os, "scandir", listed_then_evicted)
    trim_worker_results(tmp_path, 2_000)
    assert sorted(p.name for p in folder.iterdir()) == ["r4", "r5"]
