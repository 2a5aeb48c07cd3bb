"""With several workers, a result stored by a worker that is then replaced (killed, restarted) stays readable at
`GET /results/{id}` until its TTL: its files are its slot's, and the replacement, which takes the slot, adopts
them. Named by the worker's pid, they went with it, and the client's result id was a 404.

A real `segment-serve` of two workers on the rule model, real uploads and SIGKILL; and the adoption on its own, on
files of known times and sizes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np

from service.results_shared import SharedResultsCache
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes
from tests.service.worker_checks import OPTIONS
from tests.service.worker_helpers import ready_pids, replacements, segment, worker_environ


def _upload(seed: int) -> bytes:
    """A small image of its own (the rule model labels each pixel by its dominant channel): each id's labels
    differ, so a result read under another id's would show."""
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _stored_by_folder(results: Path, ids: dict[str, bytes]) -> dict[str, set[str]]:
    """Which worker's folder holds each result: folder -> result ids."""
    out: dict[str, set[str]] = {}
    for rid in ids:
        for folder in results.iterdir():
            if (folder / rid).is_file():
                out.setdefault(folder.name, set()).add(rid)
    return out


def test_a_killed_workers_results_are_read_after_its_replacement_starts(rel_rule_model: Path) -> None:
    """Results stored by both workers; SIGKILL to one; once its replacement is ready, every id answers 200 with
    the labels `/segment` gave, whichever worker is asked (new connections, several times each)."""
    with ServerProcess(rel_rule_model, **OPTIONS, SEGMENT_RESULT_TTL_S="600") as server:
        first = ready_pids(server)
        slots = {pid: worker_environ(pid)["SEGMENT_WORKER_SLOT"] for pid in first}
        results = Path(worker_environ(min(first))["SEGMENT_RESULTS_DIR"])
        ids: dict[str, bytes] = {}
        deadline = time.monotonic() + 60
        while len(_stored_by_folder(results, ids)) < 2:  # new connections until both workers stored some
            assert time.monotonic() < deadline, (_stored_by_folder(results, ids), server.log)
            r = segment(server.url, _upload(len(ids)))
            assert r.status_code == 200, r.text
            ids[r.headers["X-Result-ID"]] = r.content
        held = {rid: folder for folder, rids in _stored_by_folder(results, ids).items() for rid in rids}
        victim = max(first)
        os.kill(victim, signal.SIGKILL)
        after = replacements(server, {victim})
        (replacement,) = after - first
        assert worker_environ(replacement)["SEGMENT_WORKER_SLOT"] == slots[victim]  # it took the slot
        for _ in range(4):  # each on a new connection: the kernel hands them to both workers
            for rid, labels in ids.items():
                got = httpx.get(f"{server.url}/results/{rid}/labels.png", timeout=10)
                assert got.status_code == 200, (rid, held[rid], slots, got.text, server.log)
                assert got.content == labels, rid
        assert {folder.name for folder in results.iterdir()} == {f"slot-{slot}" for slot in slots.values()}
        assert server.terminate() == 0


def _files(folder: Path, times: dict[str, float], size: int) -> None:
    """Result-like files of `size` bytes, each stored at its time in `times`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, stored in times.items():
        (folder / name).write_bytes(bytes(size))
        os.utime(folder / name, (stored, stored))


def test_adoption_drops_the_expired_keeps_the_share_and_evicts_the_oldest_first(tmp_path: Path) -> None:
    """A predecessor's folder: a file past the TTL, a partial write, five live files whose names sort otherwise
    than their times. The new owner keeps the newest that fit its share, evicts the oldest of those first as it
    stores, and expires each a TTL after it was stored, not after it was adopted."""
    now = [10_000.0]
    folder = tmp_path / "slot-0"
    # Stored at these times (the TTL is 100): "e" expired; the rest live, the names in no order of time.
    _files(folder, {"e": 9_850.0, "d": 9_910.0, "a": 9_920.0, "c": 9_930.0, "b": 9_940.0, "f": 9_950.0}, 1_000)
    (folder / ".x.partial").write_bytes(bytes(500))
    cache = SharedResultsCache(tmp_path, ttl_s=100, max_bytes=3_500, clock=lambda: now[0], owner="slot-0")
    assert sorted(p.name for p in folder.iterdir()) == ["b", "c", "f"]  # the share: the three newest
    rng = np.random.default_rng(0)
    assert cache.put("new", rng.integers(0, 7, 300, dtype=np.uint8), rng.bytes(300))  # ~1 KB: one must go
    assert sorted(p.name for p in folder.iterdir()) == ["b", "f", "new"]  # the oldest, "c"
    now[0] = 10_045.0  # "b" was stored 105 s ago; adopted only 45 s ago
    assert cache.put("newer", rng.integers(0, 7, 10, dtype=np.uint8), rng.bytes(10))
    assert sorted(p.name for p in folder.iterdir()) == ["f", "new", "newer"]
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 3_500
