"""What the results stores hold is what their byte bound counts: not the full-size label map that a render
(an overlay, in `/segment` or in `/results`) computes and caches on the map it is given."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from service.core.letterbox import compute_letterbox
from service.core.outputs.labelmap import LabelMap
from service.results_shared import SharedResultsCache
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene


def overlay(url: str, body: bytes) -> httpx.Response:
    answer = httpx.post(f"{url}/segment", params={"output": "overlay"}, content=body,
                        headers={"content-type": "image/png"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer


def test_overlays_of_large_uploads_do_not_grow_memory_past_the_cache_bound(rule_model: Path) -> None:
    """Each overlay of a 2000x1500 upload computes a 3 MB full-size map; with a 1 MB cache, kept results held
    theirs (uncounted: ~47 KB each as counted), and memory grew ~3 MB a request (measured: +69 MiB over 25)."""
    body = png_bytes(scene(2000, 1500))
    with ServerProcess(rule_model, SEGMENT_WORKERS="1", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="2",
                       SEGMENT_RESULT_CACHE_BYTES="1MB") as server:
        server.wait_ready()

        def overlay_and_refetch() -> None:
            rid = overlay(server.url, body).headers["X-Result-ID"]
            again = httpx.get(f"{server.url}/results/{rid}/overlay.png", timeout=60)  # a refetch renders too
            assert again.status_code == 200

        for _ in range(5):  # each thread pool's buffers and malloc arenas warm
            overlay_and_refetch()
        before = server.memory_kib()["VmRSS"]
        for _ in range(20):
            overlay_and_refetch()
        grown_mib = (server.memory_kib()["VmRSS"] - before) / 1024
        assert grown_mib < 20, f"RSS grew {grown_mib:.0f} MiB over 20 overlays with a 1 MB result cache"


def test_a_shared_result_file_holds_the_model_map_not_the_rendered_full_size_one(tmp_path: Path) -> None:
    model_map = np.random.default_rng(0).integers(0, 5, (96, 96), dtype=np.uint8)
    label_map = LabelMap.from_model(model_map, compute_letterbox(1500, 2000, 96))
    assert label_map.full.shape == (1500, 2000)  # what an overlay computes, cached on the map
    cache = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=10_000_000, owner="101")
    assert cache.put("r", label_map, b"upload")
    (stored,) = (tmp_path / "101").iterdir()
    assert stored.stat().st_size < label_map.nbytes + 4096  # the model's map and its index vectors: ~30 KB
    kept = cache.get("r")
    assert kept is not None and np.array_equal(kept.labels.full, label_map.full)
