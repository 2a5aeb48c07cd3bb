"""The shared results store's folder stays within its byte share at every moment a reader could look, while
several codec threads store at once: written first and evicted after, each thread storing at that moment held
one result beyond the share until its eviction ran."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from service.results_cache import StoredResult, new_result_id
from service.results_files import serialised
from service.results_shared import SharedResultsCache
from testkit.images import encode
from testkit.photos import PHOTOS, photo

WRITERS = 4  # codec threads storing at once


def real_result(name: str) -> tuple[np.ndarray, bytes]:
    """A photo's upload bytes (PNG) and a label map of it (each pixel's dominant channel, dark pixels 0)."""
    image = photo(name, (320, 240))
    labels = np.where(image.max(axis=2) < 64, 0, image.argmax(axis=2) + 1).astype(np.uint8)
    return labels, encode(image, "PNG")


def folder_bytes(folder: Path) -> int:
    """The bytes of every file in `folder` now, partial files included (what the bound holds the folder to)."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:  # evicted, or renamed into place, since the listing
                    continue
    except FileNotFoundError:  # not made yet: nothing stored
        return 0
    return total


def test_concurrent_stores_never_hold_the_folder_above_its_share(tmp_path: Path) -> None:
    results = [real_result(PHOTOS[i % len(PHOTOS)]) for i in range(WRITERS)]
    file_sizes = [sum(len(part) for part in serialised(StoredResult(labels, source, 0.0)))
                  for labels, source in results]
    share = 3 * max(file_sizes)  # three results: every store evicts once the folder is full
    cache = SharedResultsCache(tmp_path, ttl_s=600, max_bytes=share, owner="101")
    folder = tmp_path / "101"
    stop = threading.Event()
    stored = [0] * WRITERS
    errors: list[BaseException] = []
    peak = 0

    def store(index: int) -> None:
        try:
            while not stop.is_set():
                assert cache.put(new_result_id(), *results[index])
                stored[index] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    writers = [threading.Thread(target=store, args=(i,)) for i in range(WRITERS)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 2.0
    samples = 0
    while time.monotonic() < deadline:
        peak = max(peak, folder_bytes(folder))
        samples += 1
    stop.set()
    for writer in writers:
        writer.join(30)

    assert errors == []
    assert all(count > 20 for count in stored), stored  # every thread stored, many times over
    assert samples > 100
    assert peak <= share, f"the folder held {peak} bytes, beyond its share of {share} ({peak / share:.2f}x)"
    assert peak > share - max(file_sizes)  # the watcher saw the folder full (it did look while results came)
    on_disk = {entry.name: entry.stat().st_size for entry in os.scandir(folder)}
    assert not any(name.startswith(".") for name in on_disk)  # no partial file left
    assert sum(on_disk.values()) <= share
    kept = [name for name in on_disk if cache.get(name) is not None]
    assert sorted(kept) == sorted(on_disk)  # each file left is a whole result
