"""Decode and encode in worker processes (SEGMENT_CODEC_PROCESSES): the same answers, byte for byte, as in
threads; bad uploads get the same error; the workers are up before the server is ready."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tests.service.svc_helpers import png_bytes, scene


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene(width, height)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _without_volatile(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "timing_ms")}


def test_worker_processes_answer_like_threads(serve, rule_model: Path) -> None:
    threads = serve(rule_model)
    processes = serve(rule_model, codec_processes=2)
    codec = processes.state.codec
    assert codec.processes is not None and len(codec.processes._processes) == 2  # started before ready
    uploads = [png_bytes(scene(150, 100)), _jpeg(1024, 768), png_bytes(scene(40, 130))]
    with threads.client() as a, processes.client() as b:
        for data in uploads:
            for kind in ("labels", "color", "stats", "polygons", "overlay"):
                ra = a.post("/segment", content=data, params={"output": kind, "format": "png"})
                rb = b.post("/segment", content=data, params={"output": kind, "format": "png"})
                assert ra.status_code == rb.status_code == 200, (kind, rb.text[:200])
                assert ra.headers["content-type"] == rb.headers["content-type"]
                if ra.headers["content-type"].startswith("image/"):
                    assert ra.content == rb.content, kind
                else:
                    assert _without_volatile(ra.json()) == _without_volatile(rb.json()), kind
            # The results cache holds the map the worker process rendered from.
            fresh = b.post("/segment", content=data, params={"output": "labels"})
            again = b.get(f"/results/{fresh.headers['x-result-id']}/labels.png")
            assert again.status_code == 200 and again.content == fresh.content
        for bad in (b"\xff\xd8\xff\xe0 not really a jpeg", b"GIF89a" + b"\x00" * 40):
            ra, rb = a.post("/segment", content=bad), b.post("/segment", content=bad)
            assert rb.status_code == ra.status_code and 400 <= rb.status_code < 500
            assert rb.json()["error"]["code"] == ra.json()["error"]["code"]
        assert b.get("/readyz").status_code == 200  # still serving after the errors
