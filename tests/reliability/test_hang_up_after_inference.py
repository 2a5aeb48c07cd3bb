"""A client that hangs up after its image was run, while its answer is encoded (a large overlay PNG takes a few
hundred milliseconds), received nothing: on a real `segment-serve` (its own HTTP protocol), that request is counted
as a hang-up (499, `segment_rejected_total{reason="client_closed"}`), not as a 200 in the success ratio and the
latency histogram."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import httpx
from PIL import Image

from model_export.synthetic import SceneConfig, render_scene
from service.settings import default_model_path
from testkit.metrics import metric_sum
from testkit.server import ServerProcess


def _large_jpeg() -> bytes:
    image, _ = render_scene(11, 4, SceneConfig(min_side=1400, max_side=2000))
    buffer = io.BytesIO()
    Image.fromarray(image).resize((2000, 1500)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _counts(url: str) -> tuple[float, float, float, float]:
    """(/segment 200s, /segment 499s, client_closed refusals, inference stage observations)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return (metric_sum(text, "segment_requests_total", route="/segment", status="200"),
            metric_sum(text, "segment_requests_total", route="/segment", status="499"),
            metric_sum(text, "segment_rejected_total", reason="client_closed"),
            metric_sum(text, "segment_stage_duration_seconds_count", stage="inference"))


def test_a_hang_up_while_the_answer_is_encoded_is_no_200(tmp_path: Path) -> None:
    body = _large_jpeg()
    with ServerProcess(default_model_path(), SEGMENT_INTRA_OP_THREADS="1") as server:
        server.wait_ready(60)
        url = httpx.URL(server.url)
        ok_before, gone_before, closed_before, runs_before = _counts(server.url)
        head = (f"POST /segment?output=overlay&format=png HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection((url.host, url.port), timeout=30)
        sock.sendall(head + body)
        deadline = time.monotonic() + 30
        while _counts(server.url)[3] == runs_before:  # until its image has been run: now it is being encoded
            assert time.monotonic() < deadline, server.log
            time.sleep(0.005)
        sock.close()
        time.sleep(1.5)  # the encode finishes and the request ends
        ok, gone, closed, _ = _counts(server.url)
    assert ok == ok_before, server.log  # no success counted for an answer nobody received
    assert (gone - gone_before, closed - closed_before) == (1, 1), server.log
