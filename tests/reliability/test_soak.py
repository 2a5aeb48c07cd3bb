"""Soak, short version of bench/reliability_bench.py: 500 sequential uploads of 25 sizes and both codecs, all
outputs; the server's RSS must not grow by more than 10 % after warm-up.

The result cache (`GET /results/...`) legitimately holds up to SEGMENT_RESULT_CACHE_BYTES of decoded images and
label maps, so RSS climbs until it is full (256 MB by default: about 1,000 requests here, see
docs/RELIABILITY.md). A 16 MB cache fills within the warm-up, and what is left to see is any real leak."""

from __future__ import annotations

from pathlib import Path

from testkit.reliability import mixed_bodies, soak
from testkit.server import ServerProcess


def test_rss_is_flat_over_mixed_sizes(tiny_onnx_model: Path) -> None:
    bodies = mixed_bodies(25)
    with ServerProcess(tiny_onnx_model, SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_RESULT_CACHE_BYTES=str(16 * 1024 * 1024)) as server:
        server.wait_ready()
        result = soak(server, bodies, requests=500, warmup=150, sample_every=25,
                      outputs=("labels", "color", "overlay", "polygons", "stats"))
    summary = result.as_dict()
    assert result.failures == 0, summary
    # Single samples swing by ±6 % with the big transient buffers of 1400² uploads (freed, then reused), so
    # compare the settled end (median of the last 4 samples) with the warm-up's peak: a leak climbs past it.
    warm_peak = max(kib for n, kib in result.trace if n <= result.warmup)
    end = sorted(kib for _, kib in result.trace[-4:])[1:3]
    assert sum(end) / 2 < 1.10 * warm_peak, (summary, result.trace)
    assert result.rss_max_after_warmup_kib < 1.25 * warm_peak, (summary, result.trace)
