"""The cheaper label map and PNG paths of `POST /segment` answer the same bytes as before: the palette PNG, the
statistics and the colour PNG of a map at the upload's size equal what their definitions give on the materialised
full-size map, for enlarging, shrinking, exact and odd geometries, every PNG bit depth, and the embedded model's
maps of real photos; over HTTP, a real server's answers equal the definitions applied to the map it kept."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from zlib_ng import zlib_ng

from service.core.contract import voc_colormap
from service.core.engine import load_engine
from service.core.letterbox import compute_letterbox, unletterbox
from service.core.options import EngineOptions
from service.core.output_kinds import OUTPUT_KINDS, RenderOptions, json_bytes
from service.core.outputs import class_stats, encode_color_png, encode_labels_png
from service.core.outputs.labelmap import LabelMap, nearest_index
from service.core.outputs.masks import palette_lut
from service.core.outputs.png import bit_depth, encode_palette_png, pack_rows
from service.core.pipeline import Pipeline
from service.settings import Settings, default_model_path
from testkit.images import encode
from testkit.photos import PHOTOS, photo
from tests.service.svc_helpers import LiveServer
from tests.service_io.labelmap_helpers import model_output

REPO = Path(__file__).resolve().parents[2]

# (original h, w, letterbox size): enlarging by uneven ratios, shrinking (some model lines unused), exact, one
# pixel sides, widths that are not a multiple of a PNG byte's pixels.
GEOMETRIES = [(768, 1024, 320), (1024, 768, 320), (641, 479, 320), (961, 1280, 320), (37, 100, 320),
              (320, 320, 320), (150, 200, 513), (333, 517, 96), (5, 700, 64), (700, 1, 64), (1, 1, 32),
              (2000, 3, 257), (1, 5000, 64), (100, 7000, 320)]
COLOURS = [2, 3, 4, 7, 16, 21, 256]  # bit depths 1, 2, 2, 4, 4, 8, 8


def png_by_definition(full: np.ndarray, palette_rgb: np.ndarray) -> bytes:
    """The palette PNG the service writes, from its definition on the full-size map: rows packed at the palette's
    bit depth, every row Up-filtered against the one above, zlib-ng level 1 with Z_RLE (service/core/outputs/png.py's
    format), IHDR, PLTE, IDAT, IEND."""
    h, w = full.shape
    bits = bit_depth(len(palette_rgb))
    per_byte = 8 // bits
    padded = np.zeros((h, -(-w // per_byte) * per_byte), np.int64)
    padded[:, :w] = full
    groups = padded.reshape(h, -1, per_byte)
    packed = sum(groups[:, :, i] << (8 - bits * (i + 1)) for i in range(per_byte)).astype(np.uint8)
    above = np.vstack((np.zeros((1, packed.shape[1]), np.uint8), packed[:-1]))
    filtered = np.hstack((np.full((h, 1), 2, np.uint8), packed - above))
    deflate = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_RLE)
    idat = deflate.compress(filtered.tobytes()) + deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"".join((b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 3, 0, 0, 0)),
                     chunk(b"PLTE", palette_rgb.tobytes()), chunk(b"IDAT", idat), chunk(b"IEND", b"")))


def model_map(size: int, seed: int, n_colours: int) -> np.ndarray:
    if seed == 0:
        return np.random.default_rng(size).integers(0, n_colours, (size, size), dtype=np.uint8)
    return model_output(size, seed, n_colours)


@pytest.mark.parametrize(("h", "w", "size"), GEOMETRIES)
def test_palette_png_is_its_definition_on_the_full_map(h: int, w: int, size: int) -> None:
    info = compute_letterbox(h, w, size)
    for n_colours in COLOURS:
        palette = palette_lut(voc_colormap(256))[:n_colours]
        for seed in (0, 1):
            raw = model_map(size, seed, n_colours)
            full = unletterbox(raw, info)
            expected = png_by_definition(full, palette)
            assert encode_palette_png(LabelMap.from_model(raw, info), palette) == expected
            assert encode_palette_png(LabelMap.from_array(full), palette) == expected
        decoded = Image.open(io.BytesIO(expected))
        np.testing.assert_array_equal(np.asarray(decoded), full)  # the definition is the map


@pytest.mark.parametrize(("h", "w", "size"), GEOMETRIES)
def test_counts_statistics_and_colour_png_equal_the_full_map(h: int, w: int, size: int) -> None:
    info = compute_letterbox(h, w, size)
    classes = [f"c{i}" for i in range(20)]
    palette = voc_colormap(256)
    for seed in (0, 1, 2):
        raw = model_map(size, seed, 21 if seed else 256)
        label_map, full = LabelMap.from_model(raw, info), unletterbox(raw, info)
        np.testing.assert_array_equal(label_map.counts, np.bincount(full.ravel(), minlength=256))
        assert json_bytes(class_stats(label_map, classes)) == json_bytes(class_stats(full, classes))
        assert label_map.max_id == full.max()
        np.testing.assert_array_equal(label_map.wide_rows()[0][label_map.rows], full)
        assert encode_color_png(label_map, palette) == encode_color_png(full, palette)


def test_maps_with_any_non_decreasing_index_maps_count_right() -> None:
    """A map made directly, with index maps no resize gives (weights 0 to 4, not one apart), still counts and
    bounds every class exactly."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        small = model_output(int(rng.integers(4, 40)), trial, 6)[: int(rng.integers(2, 30))]
        rows = np.sort(rng.integers(0, small.shape[0], int(rng.integers(1, 90))))
        cols = np.sort(rng.integers(0, small.shape[1], int(rng.integers(1, 90))))
        label_map = LabelMap(small, rows, cols)
        if label_map.identity:  # the same shape is taken to be the map itself
            continue
        full = small[np.ix_(rows, cols)]
        np.testing.assert_array_equal(label_map.counts, np.bincount(full.ravel(), minlength=256))
        assert class_stats(label_map, ["a"] * 6) == class_stats(full, ["a"] * 6)


def test_packing_is_linear_modulo_256() -> None:
    """What the palette PNG relies on: packing the rows' differences gives the packed rows' differences."""
    rng = np.random.default_rng(3)
    for bits in (1, 2, 4):
        for width in (1, 7, 8, 33, 1024):
            a, b = (rng.integers(0, 1 << bits, (5, width), dtype=np.uint8) for _ in range(2))
            np.testing.assert_array_equal(pack_rows(a - b, bits), pack_rows(a, bits) - pack_rows(b, bits))


def test_the_geometry_is_shared_and_read_only() -> None:
    """Index maps are made once per geometry and shared between maps, so none can be written (which would change
    every later answer of that geometry); a pickled map (the shared results cache's files) holds only its map."""
    info = compute_letterbox(768, 1024, 320)
    first, second = (LabelMap.from_model(model_output(320, seed, 5), info) for seed in (1, 2))
    assert first.rows is second.rows and first.cols is second.cols
    assert first.rows is nearest_index(240, 768)
    _ = first.counts, first.used_lines
    for array in (first.rows, first.cols, *first.used_lines[1:]):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
    third = LabelMap.from_model(model_output(320, 3, 5), info)
    assert third.axes[0].index is third.rows  # the geometry, at hand
    plain = LabelMap(third.small, third.rows.copy(), third.cols.copy())
    data = pickle.dumps(third, protocol=5)
    assert len(data) <= len(pickle.dumps(plain, protocol=5)) + 8  # a read-only flag per array at most
    back = pickle.loads(data)
    np.testing.assert_array_equal(back.full, third.full)
    np.testing.assert_array_equal(back.counts, np.bincount(third.full.ravel(), minlength=256))


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_engine(EngineOptions(intra_op_threads=1)))


def test_real_photos_answer_as_their_full_maps(pipeline: Pipeline) -> None:
    meta = pipeline.engine.metadata
    for name in PHOTOS:
        for size in ((1024, 768), (640, 480), (1280, 961)):
            prepared = pipeline.preprocess(encode(photo(name, size=size), "JPEG", 90))
            labels = pipeline.infer([prepared.tensor])[0]
            full = unletterbox(labels, prepared.info)
            for kind in ("labels", "stats", "color", "polygons"):
                got, media = pipeline.render(kind, prepared, pipeline.postprocess(labels, prepared), RenderOptions())
                want, _ = pipeline.render(kind, prepared, LabelMap.from_array(full), RenderOptions())
                assert media == OUTPUT_KINDS[kind].encodings[0].media_type
                assert (json_bytes(got) if isinstance(got, dict) else got) == \
                    (json_bytes(want) if isinstance(want, dict) else want), (name, size, kind)
            palette = palette_lut(meta.palette)[: max(len(meta.palette), int(full.max()) + 1)]
            assert encode_labels_png(pipeline.postprocess(labels, prepared), meta.palette) == \
                png_by_definition(full, palette)


def test_first_answers_after_warm_up_import_nothing() -> None:
    """Warm-up pays what the outputs load on first use: in a fresh interpreter, the first answer of every kind after
    it imports nothing. The statistics no longer call `np.unique`, whose first call imported `numpy.ma` (8 ms):
    no answer needs it any more."""
    code = (
        "import sys, json\n"
        "from service.core.engine import load_engine\n"
        "from service.core.options import EngineOptions\n"
        "from service.core.output_kinds import OUTPUT_KINDS, RenderOptions\n"
        "from service.core.pipeline import Pipeline\n"
        "from testkit.images import encode\n"
        "from testkit.photos import photo\n"
        "pipeline = Pipeline(load_engine(EngineOptions(intra_op_threads=1)))\n"
        "pipeline.warm_outputs()\n"
        "data = encode(photo('coffee.png', size=(1024, 768)), 'JPEG', 90)\n"
        "before = set(sys.modules)\n"
        "for name, kind in OUTPUT_KINDS.items():\n"
        "    prepared = pipeline.preprocess(data, full_resolution=kind.shows_image)\n"
        "    label_map = pipeline.postprocess(pipeline.infer([prepared.tensor])[0], prepared)\n"
        "    for encoding in kind.encodings:\n"
        "        assert pipeline.render(name, prepared, label_map, RenderOptions(format=encoding.format), {})[0]\n"
        "print(json.dumps([sorted(set(sys.modules) - before), 'numpy.ma' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], False]


def test_the_server_answers_the_definitions_of_the_map_it_kept() -> None:
    """Over HTTP (real uvicorn, the embedded model, real photos as JPEG): the labels PNG is the definition's PNG
    of the map the server kept for /results, byte for byte, and the statistics are that map's, in the same
    bytes as rendered from the full-size array."""
    settings = Settings(model_path=default_model_path(), host="127.0.0.1", port=0, intra_op_threads=1)
    server = LiveServer(settings).start()
    try:
        state = server.state
        meta = state.engine.metadata
        with server.client() as client:
            for name in PHOTOS[:3]:
                data = encode(photo(name, size=(1024, 768)), "JPEG", 90)
                r = client.post("/segment?output=labels", content=data, headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200, r.text
                full = state.cache.get(r.headers["x-result-id"]).labels
                full = full.full if isinstance(full, LabelMap) else full
                palette = palette_lut(meta.palette)[: max(len(meta.palette), int(full.max()) + 1)]
                assert r.content == png_by_definition(full, palette)

                r = client.post("/segment?output=stats", content=data, headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200, r.text
                result_id = r.headers["x-result-id"]
                kept = state.cache.get(result_id).labels
                full = kept.full if isinstance(kept, LabelMap) else kept
                want, _ = state.codec.pipeline.render("stats", None, LabelMap.from_array(full), RenderOptions(),
                                                      {"id": result_id, "model": state.engine.name,
                                                       "model_sha256": state.engine.sha256})
                body = json.loads(r.content)
                timing = json_bytes({"timing_ms": body["timing_ms"]})[1:-1]
                assert r.content == json_bytes(want)[:-1] + b"," + timing + b"}"
    finally:
        server.stop()
