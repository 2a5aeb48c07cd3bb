"""An APNG whose IDAT image is not part of its animation (no fcTL before IDAT: a hidden default image, Pillow's
`info["default_image"]`) decodes to the first animation frame, the picture browsers show, on every decode path;
an APNG whose IDAT image is its first frame decodes as before."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.core.decode import decode_image, decode_image_for_model, open_upload
from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.pipeline import Pipeline
from tests.service.svc_helpers import make_rule_model

MAX_PIXELS = 10**7
SIZE = (40, 30)
RED, GREEN, BLUE = (230, 20, 20), (20, 220, 20), (20, 20, 220)


def apng(default: Image.Image | None, frames: list[Image.Image]) -> bytes:
    """An APNG written by Pillow: `default` as a hidden default image before the `frames`, or none (the first
    frame is then the IDAT image)."""
    buf = io.BytesIO()
    first = default if default is not None else frames[0]
    rest = frames if default is not None else frames[1:]
    first.save(buf, "PNG", save_all=True, append_images=rest, default_image=default is not None, duration=100)
    return buf.getvalue()


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def build(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in parts)


def solid(colour: tuple[int, ...], size: tuple[int, int] = SIZE, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def pillow_frame(data: bytes, frame: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.seek(frame)
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    model = make_rule_model(tmp_path_factory.mktemp("apng") / "rule.onnx", input_size=32)
    return Pipeline(load_engine(EngineOptions(model_path=model, providers="cpu", intra_op_threads=1)))


def every_path(data: bytes, pipeline: Pipeline) -> dict[str, np.ndarray]:
    """The decoded RGB image of each decode path an upload can take."""
    reduced, orig_hw = decode_image_for_model(data, MAX_PIXELS, 32)
    assert orig_hw == reduced.shape[:2]  # not a JPEG: never reduced
    with_upload = decode_image(open_upload(data, MAX_PIXELS), MAX_PIXELS)
    return {
        "decode_image": decode_image(data, MAX_PIXELS),
        "decode_image_for_model": reduced,
        "opened upload": with_upload,
        "preprocess full": pipeline.preprocess(data, full_resolution=True).image,
        "preprocess for model": pipeline.preprocess(data).image,
        "preprocess opened": pipeline.preprocess(pipeline.open(data)).image,
    }


def test_hidden_default_image_gives_the_first_animation_frame(pipeline: Pipeline) -> None:
    data = apng(solid(RED), [solid(GREEN), solid(BLUE)])
    with Image.open(io.BytesIO(data)) as img:  # what Pillow makes of it: the hidden image is its frame 0
        assert img.info.get("default_image") is True and img.n_frames == 3
    first_frame = pillow_frame(data, 1)
    assert (first_frame == GREEN).all() and (pillow_frame(data, 0) == RED).all()
    for path, got in every_path(data, pipeline).items():
        np.testing.assert_array_equal(got, first_frame, err_msg=path)


def test_apng_whose_idat_is_the_first_frame_is_unchanged(pipeline: Pipeline) -> None:
    data = apng(None, [solid(GREEN), solid(BLUE)])
    with Image.open(io.BytesIO(data)) as img:
        assert not img.info.get("default_image") and img.n_frames == 2
    for path, got in every_path(data, pipeline).items():
        np.testing.assert_array_equal(got, pillow_frame(data, 0), err_msg=path)


def partial_first_frame(exif: bytes | None = None) -> tuple[bytes, Image.Image]:
    """A hidden opaque red default image, then a first frame covering (5, 4)-(15, 12) only, half transparent blue,
    blended over (so Pillow would blend it over the red); with an eXIf chunk if given."""
    frame = solid((*BLUE, 128), (10, 8), "RGBA")
    idat = b"".join(body for kind, body in chunks(apng(None, [frame])) if kind == b"IDAT")
    canvas = chunks(apng(None, [solid((*RED, 255), SIZE, "RGBA")]))
    fctl = struct.pack(">IIIIIHHBB", 0, 10, 8, 5, 4, 1, 10, 0, 1)  # seq, w, h, x, y, delay, dispose none, over
    parts = [canvas[0], (b"acTL", struct.pack(">II", 1, 0))]
    if exif is not None:
        parts.append((b"eXIf", exif))
    parts += [c for c in canvas if c[0] == b"IDAT"]
    parts += [(b"fcTL", fctl), (b"fdAT", struct.pack(">I", 1) + idat), (b"IEND", b"")]
    return build(parts), frame


def shown(frame: Image.Image) -> np.ndarray:
    """The partial frame as a browser shows it on a white page: on a transparent canvas, composited over white."""
    canvas = Image.new("RGBA", SIZE, (255, 255, 255, 255))
    canvas.alpha_composite(frame, (5, 4))
    return np.asarray(canvas.convert("RGB"))


def test_a_first_frame_covering_part_of_the_canvas_shows_white_around_it(pipeline: Pipeline) -> None:
    data, frame = partial_first_frame()
    expected = shown(frame)
    assert (expected[0, 0] == 255).all() and not (expected[6, 8] == 255).all()
    for path, got in every_path(data, pipeline).items():
        np.testing.assert_array_equal(got, expected, err_msg=path)


def test_a_partial_first_frame_turns_by_its_exif_orientation(pipeline: Pipeline) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data, frame = partial_first_frame(exif.tobytes()[6:])  # an eXIf chunk holds the bare TIFF block, no "Exif\0\0"
    expected = np.asarray(Image.fromarray(shown(frame)).transpose(Image.Transpose.ROTATE_270))
    assert expected.shape[:2] == (SIZE[0], SIZE[1])
    for path, got in every_path(data, pipeline).items():
        np.testing.assert_array_equal(got, expected, err_msg=path)
    assert decode_image_for_model(data, MAX_PIXELS, 32)[1] == (SIZE[0], SIZE[1])  # the turned original size


def test_an_unreadable_animation_gives_the_default_image(pipeline: Pipeline) -> None:
    """acTL promises a frame after the hidden default image, but none follows: the default image, which any PNG
    decoder shows, rather than an error for a file every viewer displays."""
    data = apng(solid(RED), [solid(GREEN)])
    broken = build([c for c in chunks(data) if c[0] not in (b"fcTL", b"fdAT")])
    with Image.open(io.BytesIO(broken)) as img:
        assert img.info.get("default_image") is True and img.n_frames == 2
    for path, got in every_path(broken, pipeline).items():
        np.testing.assert_array_equal(got, pillow_frame(broken, 0), err_msg=path)

