"""Result files left in `SEGMENT_RESULTS_DIR` by processes gone for good are removed once expired
(service/results_sweep.py): a single server names its folder by its pid, so every restart left the last one's
files there for ever."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np

from service.results_files import MTIME_GRACE_S as GRACE_S
from service.results_shared import SharedResultsCache
from service.results_sweep import remove_expired_results
from testkit.images import encode
from testkit.photos import photo
from testkit.server import ServerProcess


def aged(path: Path, seconds: float, content: bytes = b"x" * 100) -> Path:
    """`path` written with `content`, last modified `seconds` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_expired_files_are_removed_wherever_they_lie_and_nothing_else(tmp_path: Path) -> None:
    ttl = 60.0
    expired = [aged(tmp_path / "4242" / "old-result", ttl + GRACE_S + 5),  # a pid folder of a process gone
               aged(tmp_path / "slot-0" / "AbC_12-x", ttl + 100),
               aged(tmp_path / "flatOldVersion", ttl + 100),  # written flat by an older version
               aged(tmp_path / "4242" / ".cut-off.partial", ttl + 100)]  # its writer died mid-write
    kept = [aged(tmp_path / "4242" / "fresh", ttl - 5),
            aged(tmp_path / "4242" / ".being-written.partial", 0),
            aged(tmp_path / "not a result id.txt", ttl + 100),  # not a name of ours
            aged(tmp_path / "slot-0" / "within-grace", ttl + GRACE_S / 2)]
    removed = remove_expired_results(tmp_path, ttl, time.time())
    assert removed == 100 * len(expired)
    assert [p for p in expired if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert (tmp_path / "4242").is_dir()  # folders stay: a live owner writes into its own as it next stores


def test_a_cache_sweeps_as_it_starts_and_at_most_every_half_ttl_as_it_stores(tmp_path: Path) -> None:
    ttl = 30.0
    left = aged(tmp_path / "999999" / "left-behind", ttl + 10)
    cache = SharedResultsCache(tmp_path, ttl_s=ttl, max_bytes=100_000, owner="slot-0")
    assert not left.exists()  # swept at start
    left = aged(tmp_path / "999999" / "left-again", ttl + 10)
    assert cache.put("first", np.ones(10, np.uint8), b"upload")
    assert left.exists()  # swept a moment ago: not again on every store
    cache._swept -= ttl / 2
    assert cache.put("second", np.ones(10, np.uint8), b"upload")
    assert not left.exists()
    assert cache.get("first") is not None and cache.get("second") is not None


def test_a_restarted_server_removes_what_the_one_before_it_left_once_expired(tmp_path: Path,
                                                                            tiny_onnx_model: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    env = {"SEGMENT_RESULTS_DIR": str(results), "SEGMENT_RESULT_TTL_S": "2"}
    upload = encode(photo("astronaut.png"), "JPEG")

    def store_one(server: ServerProcess) -> str:
        r = httpx.post(f"{server.url}/segment", content=upload, headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers["X-Result-ID"]

    killed = ServerProcess(tiny_onnx_model, **env).wait_ready()
    try:
        store_one(killed)
        killed.proc.kill()  # a crash: nothing of it runs any more
        killed.proc.wait(10)
    finally:
        killed.terminate()
    stopped = ServerProcess(tiny_onnx_model, **env).wait_ready()
    with stopped:
        store_one(stopped)
    left = sorted(p.relative_to(results) for p in results.rglob("*") if p.is_file())
    assert {p.parts[0] for p in left} == {str(killed.pid), str(stopped.pid)}  # each in its own folder
    time.sleep(2 + GRACE_S + 0.5)
    with ServerProcess(tiny_onnx_model, **env).wait_ready() as third:
        assert [p for p in results.rglob("*") if p.is_file()] == []
        rid = store_one(third)
        assert httpx.get(f"{third.url}/results/{rid}/labels.png", timeout=30).status_code == 200
