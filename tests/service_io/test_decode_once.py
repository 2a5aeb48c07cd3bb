"""The structure checks and the header read run once per upload: on `POST /segment`'s decode (`Codec.decode`), where
the pool choice read the header of every full-resolution or non-JPEG upload before the decode read it again, and
on the core's own paths."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from service.codec import HEAVY_DECODE_PIXELS, Codec
from service.core import structure
from service.core.decode import dct_reduction, decode_image, decode_image_for_model
from service.core.handoff import WorkerThreads
from service.core.pipeline import Pipeline
from tests.service.svc_helpers import rule_pipeline


class Calls:
    """Counts calls of `structure.check_structure` (under every name a service module imported it as) and of
    Pillow's `Image.open`: the structure check and the header read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.structure = self.header = 0
        check, open_image = structure.check_structure, Image.open

        def counted_check(*args: object, **kwargs: object) -> None:
            self.structure += 1
            return check(*args, **kwargs)

        def counted_open(*args: object, **kwargs: object) -> Image.Image:
            self.header += 1
            return open_image(*args, **kwargs)

        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("service") and getattr(module, "check_structure",
                                                                                 None) is check:
                monkeypatch.setattr(module, "check_structure", counted_check)
        monkeypatch.setattr(Image, "open", counted_open)

    def taken(self) -> tuple[int, int]:
        """(structure checks, header reads) since the last call."""
        counts = (self.structure, self.header)
        self.structure = self.header = 0
        return counts


def encoded(width: int, height: int, fmt: str) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (200, 40, 30)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return rule_pipeline(tmp_path_factory.mktemp("once"))


@pytest.fixture()
def codec(pipeline: Pipeline) -> Iterator[Codec]:
    light, heavy = WorkerThreads(1, "codec"), WorkerThreads(1, "heavy-decode")
    yield Codec(pipeline, light, heavy_threads=heavy)
    light.shutdown()
    heavy.shutdown()


UPLOADS = {
    "png": (encoded(120, 90, "PNG"), False),
    "png-full-resolution": (encoded(120, 90, "PNG"), True),
    "jpeg-full-resolution": (encoded(1024, 768, "JPEG"), True),
    "jpeg-for-model": (encoded(1024, 768, "JPEG"), False),
    "webp": (encoded(120, 90, "WEBP"), False),
}


@pytest.mark.parametrize("name", UPLOADS)
def test_segment_decode_checks_and_reads_the_header_once(name: str, codec: Codec, monkeypatch) -> None:
    data, full_resolution = UPLOADS[name]
    calls = Calls(monkeypatch)
    prepared = asyncio.run(codec.decode(data, full_resolution=full_resolution))
    assert calls.taken() == (1, 1)
    with Image.open(io.BytesIO(data)) as img:  # the decode's answer is the upload's
        assert prepared.info.orig_h == img.height and prepared.info.orig_w == img.width


def test_a_heavy_upload_is_checked_and_read_once_across_both_pools(codec: Codec, monkeypatch) -> None:
    data = encoded(5000, 4000, "PNG")  # 20 MP: decoded in the low-priority pool
    assert HEAVY_DECODE_PIXELS < 5000 * 4000
    calls = Calls(monkeypatch)
    prepared = asyncio.run(codec.decode(data, full_resolution=False))
    assert calls.taken() == (1, 1)
    assert prepared.image.shape == (4000, 5000, 3)


def test_core_paths_check_and_read_the_header_once(pipeline: Pipeline, monkeypatch) -> None:
    png, jpeg = UPLOADS["png"][0], UPLOADS["jpeg-for-model"][0]
    calls = Calls(monkeypatch)
    with pipeline.open(png) as upload:
        assert upload.pixels == 120 * 90 and not upload.is_jpeg
        assert pipeline.preprocess(upload, full_resolution=True).image.shape == (90, 120, 3)
    assert calls.taken() == (1, 1)
    upload = pipeline.open(jpeg)
    assert upload.pixels == 1024 * 768 and upload.is_jpeg
    denom = dct_reduction(1024, 768, 32)  # the JPEG decodes reduced for the 32 px model
    assert denom > 1 and pipeline.preprocess(upload).image.shape == (768 // denom, 1024 // denom, 3)
    assert calls.taken() == (1, 1)
    decode_image(png, 10**6)
    decode_image_for_model(jpeg, 10**6, 32)
    assert calls.taken() == (2, 2)
