"""Results shared between worker processes through files (`SharedResultsCache`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import results_shared
from service.core.outputs.labelmap import LabelMap
from service.results_cache import new_result_id
from service.results_shared import SharedResultsCache, remove_unkept_results


def result(n: int, seed: int = 0) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, (n,), dtype=np.uint8), rng.bytes(n)


def files(directory: Path) -> list[str]:
    """The names of the result files in `directory`, whichever worker's, and of any partial file left."""
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_a_result_stored_by_one_worker_is_read_by_another(tmp_path: Path) -> None:
    writer = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, owner="101")
    reader = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, owner="102")
    labels, source = result(500)
    rid = new_result_id()
    assert writer.put(rid, labels, source)
    stored = reader.get(rid)
    assert stored is not None
    assert np.array_equal(stored.labels, labels) and stored.source == source
    assert reader.get(new_result_id()) is None
    assert files(tmp_path) == [rid]  # no partial file left behind


def test_expired_results_are_gone_for_every_worker_and_their_files_removed(tmp_path: Path) -> None:
    now = [1000.0]
    writer = SharedResultsCache(tmp_path, ttl_s=10, max_bytes=10_000, clock=lambda: now[0], owner="101")
    reader = SharedResultsCache(tmp_path, ttl_s=10, max_bytes=10_000, clock=lambda: now[0], owner="102")
    writer.put("a", *result(100))
    now[0] += 11
    assert reader.get("a") is None  # expired, although its owner has not removed the file yet
    writer.put("b", *result(100))  # the owner's next store removes what expired
    assert files(tmp_path) == ["b"]


def test_each_worker_keeps_its_share_evicting_its_oldest(tmp_path: Path) -> None:
    one = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=3000, owner="101")
    other = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=3000, owner="102")
    assert other.put("theirs", *result(300))
    for key in "abcd":
        assert one.put(key, *result(300))
    names = files(tmp_path)
    assert "a" not in names and {"b", "c", "d", "theirs"} <= set(names)  # only its own files are evicted
    assert sum(p.stat().st_size for p in (tmp_path / "101").iterdir()) <= 3000
    assert not one.put("huge", *result(4000))
    assert not SharedResultsCache(tmp_path, ttl_s=0, max_bytes=1000).put("x", *result(10))


def test_names_that_are_not_result_ids_are_not_looked_up(tmp_path: Path) -> None:
    cache = SharedResultsCache(tmp_path / "results", ttl_s=60, max_bytes=10_000)
    (tmp_path / "results").mkdir()
    (tmp_path / "secret").write_bytes(b"not a result")
    for name in ("../secret", "..", ".", "", "a/b", "x" * 65):
        assert cache.get(name) is None


def test_a_result_that_cannot_be_written_is_not_kept_and_raises_nothing(tmp_path: Path) -> None:
    cache = SharedResultsCache(tmp_path / "gone", ttl_s=60, max_bytes=10_000)  # e.g. the directory was removed
    assert cache.put("a", *result(100)) is False
    assert cache.get("a") is None


def test_a_label_map_and_its_way_back_to_the_upload_size_are_kept_exactly(tmp_path: Path) -> None:
    small = np.random.default_rng(1).integers(0, 21, (30, 40), dtype=np.uint8)
    rows, cols = (np.repeat(np.arange(n), 3).astype(np.intp) for n in (30, 40))  # each pixel seen 3x3 times
    label_map = LabelMap(small, rows, cols)
    cache = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=1_000_000)
    assert cache.put("m", label_map, b"upload bytes")
    stored = cache.get("m")
    assert stored is not None and isinstance(stored.labels, LabelMap)
    assert stored.labels.shape == (90, 120) and np.array_equal(stored.labels.full, label_map.full)
    assert stored.source == b"upload bytes"


def test_the_results_of_a_slot_no_longer_kept_are_removed_and_read_as_unknown(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot the supervisor no longer keeps (SIGTTOU) has no worker to adopt its files: it removes them, and a
    reader that races the removal finds nothing (a 404) rather than failing."""
    gone = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, owner="slot-1")
    live = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000, owner="slot-0")
    assert gone.put("lost", *result(100)) and live.put("kept", *result(100))
    owners = results_shared._owners(tmp_path)
    assert remove_unkept_results(tmp_path, [0, 2]) == ["slot-1"]  # slot 2 never stored anything
    assert files(tmp_path) == ["kept"]
    monkeypatch.setattr(results_shared, "_owners", lambda directory: owners)  # listed before the removal
    assert live.get("lost") is None and live.get("kept") is not None
    remove_unkept_results(tmp_path, [])
    assert live.get("kept") is None and files(tmp_path) == []
    assert live.put("again", *result(100)) and live.get("again") is not None  # a live owner's folder comes back
