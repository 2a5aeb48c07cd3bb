"""`POST /segment` on JPEGs that are both EXIF-oriented and decoded reduced (DCT scaling), against an independent
reference: Pillow's full-size decode with `exif_transpose`, and the rule model's answer applied to those pixels.

A side that is not a multiple of the DCT scale ends in a partial block; the mask must still line up with the
picture whichever corner the EXIF orientation turns that block to, and come back at the displayed size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.service.svc_helpers import LiveServer, make_rule_model, rule_model_server

SIZE = 96  # the rule model's input: a 2001 px side decodes at 1/8
# Each EXIF orientation as a Pillow transpose: the stored pixels to the displayed picture.
_TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}
# The inverse of each EXIF orientation, as Pillow transposes: the stored pixels whose displayed view is a picture.
_STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with rule_model_server(tmp_path_factory.mktemp("rule"), SIZE) as live:
        yield live


def rule(rgb: np.ndarray) -> np.ndarray:
    """The rule model's answer written in numpy: brightest channel R/G/B -> 1/2/3, below 64 -> 0."""
    values = rgb.astype(np.int64)
    labels = values.argmax(axis=2) + 1
    labels[values.max(axis=2) < 64] = 0
    return labels.astype(np.uint8)


def oriented_jpeg(displayed: np.ndarray, orientation: int, mode: str = "RGB") -> bytes:
    """A JPEG that shows `displayed` once its EXIF `orientation` is applied."""
    img = Image.fromarray(displayed)
    if _STORED[orientation] is not None:
        img = img.transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.convert(mode).save(buf, "JPEG", quality=98, subsampling=0, exif=exif.tobytes())
    return buf.getvalue()


def reference_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def ramp(height: int, width: int) -> np.ndarray:
    """Red rising along x, green falling along y."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.rint((np.arange(width) + 0.5) / width * 255)[None, :]
    img[..., 1] = np.rint(np.linspace(200, 60, height))[:, None]
    return img


def tiles(height: int, width: int, side: int = 37) -> np.ndarray:
    """Dark, red, green and blue squares at random: many edges in both axes for the rule model to find."""
    colours = np.array([(10, 10, 10), (220, 20, 20), (20, 220, 20), (20, 20, 220)], np.uint8)
    ids = np.random.default_rng(0).integers(0, 4, (height // side + 1, width // side + 1))
    return colours[np.repeat(np.repeat(ids, side, 0), side, 1)[:height, :width]]


def segment(server: LiveServer, data: bytes, output: str = "labels") -> tuple[bytes, str]:
    with server.client() as client:
        r = client.post("/segment", params={"output": output}, content=data,
                        headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return r.content, r.headers["x-result-id"]


@pytest.mark.parametrize("mode", ["RGB", "CMYK"])  # libjpeg-turbo's fast path, and Pillow's
@pytest.mark.parametrize("shape", [(203, 2001), (1001, 603)])
def test_mask_is_not_shifted_by_the_partial_dct_block(server: LiveServer, shape: tuple[int, int], mode: str) -> None:
    """Both sides end in a partial 1/8 block; orientations 2, 3, 4, 6, 7 and 8 turn one to the left or top of the
    picture. The same stored pixels under every orientation: the answer agrees with the reference as well as the
    unturned one does (a block's shift cost 1.6-11 points more), and it is the unturned answer, turned."""
    stored = Image.fromarray(tiles(*shape)).convert(mode)
    unturned = None
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        stored.save(buf, "JPEG", quality=98, subsampling=0, exif=exif.tobytes())
        labels = np.asarray(Image.open(io.BytesIO(segment(server, buf.getvalue())[0])))
        reference = rule(reference_pixels(buf.getvalue()))
        assert labels.shape == reference.shape
        # Quantisation to the model's 96 px costs 11-21 % of these pixels, whatever the orientation.
        disagreement = float((labels != reference).mean())
        if unturned is None:
            unturned, unturned_disagreement = labels, disagreement
            continue
        assert disagreement < unturned_disagreement + 0.005, orientation
        turned = np.asarray(Image.fromarray(unturned).transpose(_TURN[orientation]))
        assert (labels != turned).mean() < 0.01, orientation  # nearest-neighbour ties round the other way


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_turned_cmyk_jpeg_whose_reduced_decode_is_square(server: LiveServer, orientation: int) -> None:
    """A CMYK JPEG (decoded by Pillow, not libjpeg-turbo's fast path) stored 993x1000 decodes at 1/8 to a square
    125x125: turned by EXIF, every answer is still 1000 wide and 993 high, and the cached overlay renders."""
    displayed = ramp(993, 1000)
    data = oriented_jpeg(displayed, orientation, mode="CMYK")
    body, result_id = segment(server, data)
    labels = np.asarray(Image.open(io.BytesIO(body)))
    reference = rule(reference_pixels(data))
    assert labels.shape == reference.shape == (993, 1000)
    assert (labels == reference).mean() > 0.95
    stats = segment(server, data, "stats")[0]
    assert b'"width":1000,' in stats and b'"height":993,' in stats
    with server.client() as client:
        overlay = client.get(f"/results/{result_id}/overlay.png")
    assert overlay.status_code == 200, overlay.text
    assert Image.open(io.BytesIO(overlay.content)).size == (1000, 993)


def test_reference_model_is_the_rule(tmp_path: Path) -> None:
    """The numpy rule above is what the ONNX rule model computes (so the reference is independent of the server)."""
    import onnxruntime as ort

    model = make_rule_model(tmp_path / "rule.onnx", input_size=SIZE)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (1, 40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(session.run(["labels"], {"image": pixels})[0][0], rule(pixels[0]))
