"""An upload that is expensive to decode (many pixels that cannot be decoded reduced) runs at lower CPU priority,
so that a stream of them leaves the CPU to everyone else's requests; a photo decodes in the normal pool."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from PIL import Image

from service.codec import HEAVY_DECODE_PIXELS
from service.core.pipeline import Pipeline
from tests.service.svc_helpers import decoded_pixels, png_bytes, scene


def _encoded(width: int, height: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def test_heavy_uploads_decode_at_lower_priority(serve, rule_model: Path, monkeypatch) -> None:
    seen: list[tuple[str, int]] = []
    real = Pipeline.preprocess

    def spy(self, *args, **kwargs):
        seen.append((threading.current_thread().name,
                     os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "preprocess", spy)
    server = serve(rule_model)
    seen.clear()  # the warm-up decodes a small image of its own before the server is ready
    huge_png = _encoded(5000, 4000, "PNG")  # 20 MP: over the threshold, and PNG cannot be decoded reduced
    huge_jpeg = _encoded(5000, 4000, "JPEG")  # decoded reduced for the model: an ordinary decode
    assert decoded_pixels(huge_png, full_resolution=False) > HEAVY_DECODE_PIXELS
    assert decoded_pixels(huge_jpeg, full_resolution=False) == 0
    assert decoded_pixels(huge_jpeg, full_resolution=True) > HEAVY_DECODE_PIXELS
    assert decoded_pixels(b"not an image", full_resolution=False) == 0
    with server.client() as client:
        for body in (png_bytes(scene()), huge_png, huge_jpeg):
            r = client.post("/segment", content=body, params={"output": "stats"})
            assert r.status_code == 200, r.text
    (light, light_nice), (heavy, heavy_nice), (jpeg, jpeg_nice) = seen
    assert light.startswith("codec") and jpeg.startswith("codec"), seen
    assert heavy.startswith("heavy-decode") and heavy_nice > light_nice == jpeg_nice, seen
