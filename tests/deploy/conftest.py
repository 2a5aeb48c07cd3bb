"""A session-wide service started the way the CPU image starts it, shared by the entrypoint and
dashboard checks (one start keeps the suite fast)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from testkit.photos import photo
from testkit.server import ServerProcess

from .service_proc import start_image_command


@pytest.fixture(scope="session")
def cpu_image_service(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    svc = start_image_command("cpu", tiny_onnx_model, tmp_path_factory.mktemp("cpu-image"))
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.terminate()


@pytest.fixture(scope="session")
def scraped_metrics(cpu_image_service: ServerProcess, tiny_onnx_model: Path) -> str:
    """/metrics after real traffic: a segmentation of a real photo, a rejected upload and the probes; then those of
    a server of two workers, which adds the series only several workers have (`segment_workers_*`)."""
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut.png", size=(96, 64))).save(buf, format="PNG")
    base = cpu_image_service.url
    with httpx.Client(base_url=base, timeout=60) as client:
        ok = client.post("/segment", params={"output": "stats"}, content=buf.getvalue(),
                         headers={"Content-Type": "image/png"})
        assert ok.status_code == 200, ok.text
        bad = client.post("/segment", content=b"not an image", headers={"Content-Type": "image/png"})
        assert 400 <= bad.status_code < 500, bad.text
        assert client.get("/healthz").status_code == 200
        resp = client.get("/metrics")
    assert resp.status_code == 200
    with ServerProcess(tiny_onnx_model, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1") as workers:
        several = httpx.get(f"{workers.wait_ready().url}/metrics", timeout=60)
    assert several.status_code == 200 and "segment_workers_live" in several.text
    return resp.text + several.text
