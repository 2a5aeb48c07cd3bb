"""The shared results store (`SharedResultsCache`) at its edges: expiry racing eviction, the byte bound counted on
the files themselves, the TTL's last instant, and many threads storing at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from service.results_cache import ResultsCache, new_result_id
from service.results_shared import SharedResultsCache


def result(n: int, seed: int = 0) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, (n,), dtype=np.uint8), rng.bytes(n)


def files(directory: Path) -> dict[str, int]:
    """Every file under `directory` (results and partial files, whichever worker's) and its size."""
    return {p.name: p.stat().st_size for p in directory.rglob("*") if p.is_file()}


class TickingClock:
    """A clock that moves on by `step` each time it is read, as a real one does between two reads."""

    def __init__(self, start: float = 1000.0, step: float = 0.001) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_results_that_expire_while_one_is_stored_leave_no_file(tmp_path: Path) -> None:
    """Each store expires its owner's old results and removes their files; a result that expired between two of
    the bookkeeping's reads of the clock was dropped from it without its file being removed, for ever."""
    clock = TickingClock()
    cache = SharedResultsCache(tmp_path, ttl_s=0.05, max_bytes=1_000_000, clock=clock, owner="101")
    for _ in range(300):
        assert cache.put(new_result_id(), *result(50))
    clock.now += 1.0  # every one of them has expired
    assert cache.put("last", *result(50))
    assert list(files(tmp_path)) == ["last"]


def test_many_threads_storing_at_once_keep_the_bound_and_leave_nothing_behind(tmp_path: Path) -> None:
    """Codec threads store concurrently, on the real clock, with results expiring and evicted all along."""
    share = 60_000
    cache = SharedResultsCache(tmp_path, ttl_s=0.01, max_bytes=share, owner="101")
    stop = time.monotonic() + 1.5
    errors: list[BaseException] = []

    def store(seed: int) -> None:
        try:
            while time.monotonic() < stop:
                cache.put(new_result_id(), *result(700, seed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    on_disk = files(tmp_path)
    assert not any(name.endswith(".partial") for name in on_disk)
    assert sum(on_disk.values()) <= share
    time.sleep(0.05)  # all expired
    assert cache.put("last", *result(700))
    assert list(files(tmp_path)) == ["last"]


def test_the_bound_counts_the_whole_file(tmp_path: Path) -> None:
    """A result whose arrays and upload fit the share but whose file (with its header and pickle) does not is
    not kept: kept, it held the folder above its bound."""
    share = 1000
    cache = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=share, owner="101")
    labels, source = result(500)
    assert labels.nbytes + len(source) == share
    cache.put("edge", labels, source)
    assert sum(files(tmp_path).values()) <= share
    small = result(100)
    assert cache.put("small", *small)  # what fits is still kept, and read back whole
    stored = cache.get("small")
    assert stored is not None and stored.source == small[1]
    assert sum(files(tmp_path).values()) <= share


def test_a_result_is_gone_at_its_ttl_in_either_store(tmp_path: Path) -> None:
    """Exactly at the TTL, the in-memory store (one worker) and the shared one (several) give the same answer."""
    now = [1000.0]
    memory = ResultsCache(ttl_s=10, max_bytes=10_000, clock=lambda: now[0])
    shared = SharedResultsCache(tmp_path, ttl_s=10, max_bytes=10_000, clock=lambda: now[0], owner="101")
    reader = SharedResultsCache(tmp_path, ttl_s=10, max_bytes=10_000, clock=lambda: now[0], owner="102")
    for store in (memory, shared):
        assert store.put("r", *result(100))
    now[0] = 1009.999
    assert memory.get("r") is not None and reader.get("r") is not None
    now[0] = 1010.0
    assert memory.get("r") is None
    assert reader.get("r") is None


def test_asking_whether_a_result_is_kept_agrees_with_get(tmp_path: Path) -> None:
    """`kept_for` is what `GET /results` asks on the event loop, before it takes a render slot and reads the file."""
    writer = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, owner="101")
    reader = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, owner="102")
    memory = ResultsCache(ttl_s=60, max_bytes=10_000)
    for store, asked in ((writer, reader), (memory, memory)):
        rid = new_result_id()
        assert store.put(rid, *result(100))
        assert asked.kept_for(rid, None) and asked.get(rid) is not None
        for other in (new_result_id(), "../101", "", "x" * 65, 7):
            assert not asked.kept_for(other, None)
    expired = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, clock=lambda: time.time() + 120, owner="103")
    assert not any(expired.kept_for(name, None) for name in files(tmp_path))  # every file is older than the TTL for it
