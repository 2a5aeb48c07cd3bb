"""Overload, short version of bench/reliability_bench.py: 4× the measured capacity for a few seconds.

Expect 503 + Retry-After for the excess and no other 5xx, every accepted request answered with the labels a
direct onnxruntime run gives, and the server's RSS bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.images import encode
from testkit.photos import PHOTOS, photo
from testkit.reliability import direct_labels, measure_capacity, overload
from testkit.server import ServerProcess
from tests.service.svc_helpers import with_input_size


@pytest.fixture(scope="module")
def heavy_model(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DeepLab at a 768 letterbox (~0.1-0.2 s an image here): the model, not HTTP or the client, is the
    bottleneck, so 4x its capacity is a rate the test client can really offer."""
    return with_input_size(tiny_onnx_model, tmp_path_factory.mktemp("overload") / "tiny768.onnx", 768)


def test_four_times_capacity_is_shed_cleanly(heavy_model: Path) -> None:
    # Distinct sizes per upload, so a response given to the wrong request cannot go unnoticed.
    bodies = [encode(photo(name, (200 + 40 * i, 150 + 10 * i))) for i, name in enumerate(PHOTOS)]
    expected = direct_labels(heavy_model, bodies)
    with ServerProcess(heavy_model, SEGMENT_MAX_QUEUE="8", SEGMENT_MAX_BATCH_SIZE="4",
                       SEGMENT_INTRA_OP_THREADS="2") as server:
        server.wait_ready()
        capacity = measure_capacity(server, bodies, concurrency=4, seconds=3)
        result = overload(server, bodies, expected, capacity, factor=4, seconds=8, max_inflight=64)
        assert server.proc.poll() is None
        assert server.wait_ready(timeout=30)  # and it recovers
    summary = result.as_dict()
    assert set(result.statuses) <= {200, 503}, summary
    assert result.rejected > 0 and result.accepted > 0, summary
    # Offered 4x: most of the excess is shed (allowing for a slow machine making the client itself the limit).
    assert result.rejected >= result.accepted, summary
    assert result.missing_retry_after == 0 and result.other_codes == {}, summary
    assert result.label_mismatches == 0, summary
    # Bounded memory: a queue of 8 letterboxed 768² images is ~14 MB; allow codec buffers and allocator slack.
    assert result.rss_max_kib - result.rss_start_kib < 150 * 1024, summary
