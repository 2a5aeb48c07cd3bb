"""Soak, short version of bench/reliability_bench.py: 500 sequential uploads of 25 sizes and both codecs, all
outputs; the server's RSS must not grow by more than 10 % after warm-up.

The result cache (`GET /results/...`) legitimately holds up to SEGMENT_RESULT_CACHE_BYTES of decoded images and
label maps, so RSS climbs until it is full (256 MB by default: about 1,000 requests here, see
docs/RELIABILITY.md). A 16 MB cache fills within the warm-up, and what is left to see is any real leak."""

from __future__ import annotations

from pathlib import Path

from bench.harness import ServerProcess
from bench.reliability import mixed_bodies, soak


def test_rss_is_flat_over_mixed_sizes(tiny_onnx_model: Path) -> None:
    bodies = mixed_bodies(25)
    with ServerProcess(tiny_onnx_model, SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_RESULT_CACHE_BYTES=str(16 * 1024 * 1024)) as server:
        server.wait_ready()
        result = soak(server, bodies, requests=500, warmup=150, sample_every=25,
                      outputs=("labels", "color", "overlay", "polygons", "stats"))
    summary = result.as_dict()
    assert result.failures == 0, summary
    assert result.growth < 0.10, summary
    assert result.rss_max_after_warmup_kib < 1.10 * result.rss_after_warmup_kib, (summary, result.trace)
