"""`POST /segment?resolution=`: an image segmented above the model's input size in overlapping tiles, each queued
as an image of its own and stitched back. On real uvicorn servers over the rule model (its label a function of
each pixel's colour), a tiled answer is exactly the whole canvas at that size run in one piece; the tiles of one
request leave the queue together when it fails, times out or its client hangs up; the limits answer 422."""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.core.decode import decode_image_keeping_profile
from service.core.engine import Engine, load_engine
from service.core.options import DEFAULT_MAX_PIXELS, EngineOptions
from service.core.output_kinds import RenderOptions
from service.settings import Settings
from testkit.metrics import histogram
from testkit.rawhttp import connect, http_request
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import LiveServer, make_rule_model, png_bytes, scene
from tests.service.tile_helpers import (
    decoded,
    error_code,
    hold_one_run,
    metric,
    one_piece_body,
    one_piece_label_map,
    png_labels,
    post,
    posted,
    released,
    thin_lines,
    wait_until,
)

SIZE = 96  # the rule model's input size
LINES = thin_lines(288, 192)  # native: a 288 canvas in 4 x 3 tiles
SCENE = scene(150, 100)  # at 200: 200 x 133 in 3 x 2 tiles


@pytest.fixture(scope="module")
def rule_96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rule_model(tmp_path_factory.mktemp("tiled") / "rule.onnx", input_size=SIZE)


@pytest.fixture(scope="module")
def engine(rule_96: Path) -> Engine:
    return load_engine(EngineOptions(model_path=rule_96, providers="cpu", intra_op_threads=1))


@pytest.fixture(scope="module")
def server(rule_96: Path) -> Iterator[LiveServer]:
    live = LiveServer(Settings(model_path=rule_96, host="127.0.0.1", port=0, max_wait_ms=2, max_batch_size=16,
                               intra_op_threads=1, worker_threads=2)).start()
    yield live
    live.stop()


# -- exactness ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("image", "resolution", "tiles"),
                         [(LINES, "native", 12), (LINES, 200, 6), (SCENE, 200, 6), (SCENE, "native", 4),
                          (scene(60, 300), 250, 4), (scene(300, 20), 400, 6)])
def test_tiled_labels_and_stats_are_the_canvas_run_in_one_piece(server: LiveServer, engine: Engine,
                                                                image: np.ndarray, resolution: int | str,
                                                                tiles: int) -> None:
    r = post(server.url, image, resolution=resolution)
    assert r.status_code == 200, r.text
    assert r.headers["X-Tiles"] == str(tiles)
    np.testing.assert_array_equal(png_labels(r.content), one_piece_label_map(engine, image, resolution).full)
    stats = post(server.url, image, resolution=resolution, output="stats")
    assert stats.status_code == 200 and stats.headers["X-Tiles"] == str(tiles)
    want = one_piece_body(engine, image, resolution, "stats")
    assert isinstance(want, dict)
    got = stats.json()
    assert {key: got[key] for key in want} == want


def test_a_one_pixel_line_lost_at_the_input_size_is_kept_in_tiles(server: LiveServer) -> None:
    column, row = 288 // 2 + 1, 192 // 3
    plain = png_labels(post(server.url, LINES).content)
    assert not (plain[:, column] == 1).any() and not (plain[row, :] == 2).any()  # shrunk 3x: background
    tiled = png_labels(post(server.url, LINES, resolution="native").content)
    assert (tiled[:, column] == 1).sum() >= 190 and (tiled[row, :] == 2).sum() >= 280


def test_a_resolution_at_or_below_the_input_size_is_the_default_answer(server: LiveServer) -> None:
    default = post(server.url, SCENE)
    assert default.status_code == 200 and "X-Tiles" not in default.headers
    for resolution in (SIZE, SIZE - 1, 40, 1):
        r = post(server.url, SCENE, resolution=resolution)
        assert r.status_code == 200, r.text
        assert "X-Tiles" not in r.headers
        assert r.content == default.content
    small = scene(80, 50)  # native below the input size: one input, as by default
    r = post(server.url, small, resolution="native")
    assert "X-Tiles" not in r.headers and r.content == post(server.url, small).content


def test_the_tiles_of_one_request_share_batches(server: LiveServer) -> None:
    r = post(server.url, LINES, resolution="native")
    assert r.status_code == 200 and r.headers["X-Tiles"] == "12"
    assert int(r.headers["X-Batch-Size"]) > 1  # max_batch_size 16: queued together, run together


def test_an_overlay_is_drawn_on_the_full_size_upload_from_the_tiled_labels(server: LiveServer,
                                                                            engine: Engine) -> None:
    r = post(server.url, LINES, resolution="native", output="overlay", format="png")
    assert r.status_code == 200, r.text
    assert r.headers["X-Tiles"] == "12"
    want = one_piece_body(engine, LINES, "native", "overlay", RenderOptions(format="png"))
    assert isinstance(want, bytes)
    got = decoded(r.content)
    assert got.shape == (192, 288, 3)
    np.testing.assert_array_equal(got, decoded(want))
    plain = decoded(post(server.url, LINES, output="overlay", format="png").content)
    assert not np.array_equal(plain, got)  # the line's colour is drawn only where the tiles kept it


def _turned_jpeg() -> bytes:
    """LINES as a JPEG stored on its side (192 wide, 288 high), with EXIF orientation 6 to show it upright."""
    stored = np.ascontiguousarray(np.rot90(LINES, 1))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_an_exif_turned_jpeg_at_native_is_its_turned_pixels(server: LiveServer) -> None:
    jpeg = _turned_jpeg()
    shown, _ = decode_image_keeping_profile(jpeg, DEFAULT_MAX_PIXELS)  # the service's own decode, turned
    assert shown.shape == (192, 288, 3)
    from_jpeg = post(server.url, jpeg, resolution="native")
    from_png = post(server.url, shown, resolution="native")
    assert from_jpeg.status_code == from_png.status_code == 200, from_jpeg.text
    assert from_jpeg.headers["X-Tiles"] == from_png.headers["X-Tiles"] == "12"
    labels = png_labels(from_jpeg.content)
    assert labels.shape == (192, 288)
    np.testing.assert_array_equal(labels, png_labels(from_png.content))


def test_a_bulk_request_runs_in_tiles_too(server: LiveServer, engine: Engine) -> None:
    r = post(server.url, LINES, resolution="native", priority="bulk")
    assert r.status_code == 200 and r.headers["X-Tiles"] == "12"
    np.testing.assert_array_equal(png_labels(r.content), one_piece_label_map(engine, LINES, "native").full)


# -- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "abc", "40000", "1.5", ""])
def test_an_invalid_resolution_is_422(server: LiveServer, value: str) -> None:
    r = post(server.url, SCENE, resolution=value)
    assert r.status_code == 422 and error_code(r) == "invalid_request", r.text


def test_crf_with_tiles_is_422(server: LiveServer) -> None:
    r = post(server.url, SCENE, resolution=200, crf="true")
    assert r.status_code == 422 and error_code(r) == "invalid_request", r.text  # not 501: the extra is installed
    assert "crf" in r.json()["error"]["message"]


def test_too_many_tiles_is_422_naming_the_highest_resolution_that_fits(rule_96: Path) -> None:
    live = LiveServer(Settings(model_path=rule_96, host="127.0.0.1", port=0, max_wait_ms=2, max_tiles=4,
                               intra_op_threads=1, worker_threads=2)).start()
    try:
        r = post(live.url, LINES, resolution="native")
        assert r.status_code == 422 and error_code(r) == "too_many_tiles", r.text
        message = r.json()["error"]["message"]
        assert "12 tiles" in message, message
        fits = int(re.search(r"at most (\d+)$", message).group(1))  # type: ignore[union-attr]
        assert SIZE < fits < 288
        assert r.json()["error"]["max_resolution"] == fits  # for a client to act on, without parsing the message
        # An upload stored on its side (EXIF orientation 6) is named as shown: 288x192, not 192x288.
        turned = post(live.url, _turned_jpeg(), resolution="native")
        assert turned.status_code == 422 and "for this 288x192 image" in turned.text, turned.text
        assert turned.json()["error"]["max_resolution"] == fits
        ok = post(live.url, LINES, resolution=fits)
        assert ok.status_code == 200, ok.text
        assert 1 < int(ok.headers["X-Tiles"]) <= 4
        over = post(live.url, LINES, resolution=fits + 1)  # the highest: one more pixel needs more tiles
        assert over.status_code == 422 and error_code(over) == "too_many_tiles", over.text
        assert metric(live.url, "segment_rejected_total", reason="too_many_tiles") == 3
        assert metric(live.url, "segment_request_memory_bytes") == 0
    finally:
        live.stop()


# -- accounting ---------------------------------------------------------------------------------------------------

def test_the_tiles_histogram_counts_tiled_requests_and_their_tiles(server: LiveServer) -> None:
    _, count, total = histogram(httpx.get(f"{server.url}/metrics").text, "segment_request_tiles")
    assert post(server.url, LINES, resolution="native").status_code == 200  # 12
    assert post(server.url, SCENE, resolution=200).status_code == 200  # 6
    assert post(server.url, SCENE).status_code == 200  # untiled: not counted
    buckets, count_after, total_after = histogram(httpx.get(f"{server.url}/metrics").text, "segment_request_tiles")
    assert (count_after - count, total_after - total) == (2, 18)
    assert buckets[6.0] >= 1 and buckets[16.0] - buckets[9.0] >= 1


def test_the_request_memory_is_given_back_after_tiled_requests(server: LiveServer) -> None:
    for params in ({"resolution": "native"}, {"resolution": "native", "output": "overlay"}, {"resolution": 200}):
        assert post(server.url, LINES, **params).status_code == 200
    wait_until(lambda: metric(server.url, "segment_request_memory_bytes"), 0)


# -- tiles leaving the queue together ------------------------------------------------------------------------------

SIX_TILES = scene(192, 160)  # native: 3 x 2 tiles
THREE_TILES = scene(192, 96)  # native: 3 x 1; every tile's top-left pixel 20, the scene's background
FLAT = np.full((64, 64, 3), 200, np.uint8)  # untiled: its one model input's top-left pixel 200
RUN_CORNERS: list[int] = []  # the top-left red value of each image the gated server's model ran, in order


@pytest.fixture(scope="module")
def gated_server(rule_96: Path) -> Iterator[GatedServer]:
    # 3 of the 9 places are bulk requests' to fill, 6 kept for interactive ones: a bulk request runs in at most 3
    # tiles, an interactive one in at most 6
    server = GatedServer(rule_96, max_batch_size=1, concurrent_batches=1, max_wait_ms=1, max_queue=9,
                         bulk_queue_share=1 / 3, request_timeout_s=30,
                         on_run=lambda run: RUN_CORNERS.extend(int(i[0, 0, 0]) for i in run))
    with server.running():
        yield server


@pytest.fixture
def gated(gated_server: GatedServer) -> Iterator[GatedServer]:
    yield gated_server
    gated_server.gate.set()  # whatever the test did, nothing is left held for the next one


def test_a_queue_without_room_for_every_tile_refuses_the_request_and_runs_none(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    before = sum(gated.runs)
    waiting = [posted(gated.live.url, THREE_TILES, resolution="native"), posted(gated.live.url, FLAT)]
    gated.wait_metric("segment_queue_depth", 4)  # 4 of the 9 places taken: no room for the next one's 6 tiles
    r = post(gated.live.url, SIX_TILES, resolution="native")
    assert r.status_code == 503 and error_code(r) == "overloaded", r.text
    assert httpx.get(f"{gated.live.url}/readyz").json()["queue_depth"] == 4  # none of it joined the line
    released(gated, [holder, *waiting], before, 1 + 3 + 1)
    assert waiting[0].result().headers["X-Tiles"] == "3"
    ok = post(gated.live.url, SIX_TILES, resolution="native")  # as many tiles as the queue holds
    assert ok.status_code == 200 and ok.headers["X-Tiles"] == "6"
    assert httpx.get(f"{gated.live.url}/readyz").json()["queue_depth"] == 0


def test_more_tiles_than_the_queue_has_places_is_422(gated: GatedServer) -> None:
    r = post(gated.live.url, LINES, resolution="native")  # 12 tiles; SEGMENT_MAX_TILES 16, but 6 queue places
    assert r.status_code == 422 and error_code(r) == "too_many_tiles", r.text
    fits = int(re.search(r"at most (\d+)$", r.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
    ok = post(gated.live.url, LINES, resolution=fits)
    assert ok.status_code == 200 and 1 < int(ok.headers["X-Tiles"]) <= 6


def test_a_client_hanging_up_takes_all_its_tiles_out_of_the_queue(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    before = sum(gated.runs)
    body = png_bytes(THREE_TILES)
    sock = connect(gated.live.url)
    sock.sendall(http_request(f"POST /segment?resolution=native HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                              f"Content-Length: {len(body)}", body))
    gated.wait_metric("segment_queue_depth", 3)  # every tile queued behind the held run
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    gated.wait_metric("segment_queue_depth", 0)
    released(gated, [holder], before, 1)
    gated.wait_metric("segment_request_memory_bytes", 0)


def test_a_deadline_passing_while_tiles_wait_answers_504_and_empties_the_queue(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    before = sum(gated.runs)
    started = time.monotonic()
    r = post(gated.live.url, THREE_TILES, resolution="native", timeout_s=0.4)
    assert r.status_code == 504 and error_code(r) == "deadline_exceeded", r.text
    assert time.monotonic() - started < 5
    assert httpx.get(f"{gated.live.url}/readyz").json()["queue_depth"] == 0
    released(gated, [holder], before, 1)


def test_a_bulk_requests_tiles_run_after_an_interactive_image_queued_later(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    RUN_CORNERS.clear()
    bulk = posted(gated.live.url, THREE_TILES, resolution="native", priority="bulk")
    gated.wait_metric("segment_queue_depth", 3)
    interactive = posted(gated.live.url, FLAT)
    gated.wait_metric("segment_queue_depth", 4)
    released(gated, [holder, bulk, interactive], sum(gated.runs), 1 + 3 + 1)
    assert RUN_CORNERS == [20, 200, 20, 20, 20]  # the held run, the interactive image, then the bulk tiles
    assert bulk.result().headers["X-Tiles"] == "3"


def decodes(gated: GatedServer) -> float:
    """The decodes the server has done (the `decode` stage's histogram count)."""
    return metric(gated.live.url, "segment_stage_duration_seconds_count", stage="decode")


def test_a_bulk_request_with_more_tiles_than_the_bulk_share_is_422(gated: GatedServer) -> None:
    # 6 tiles fit the queue's 6 places, but a bulk request may fill 3 of them: no retry could ever queue it.
    r = post(gated.live.url, SIX_TILES, resolution="native", priority="bulk")
    assert r.status_code == 422 and error_code(r) == "too_many_tiles", r.text
    fits = int(re.search(r"at most (\d+)$", r.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
    ok = post(gated.live.url, SIX_TILES, resolution=fits, priority="bulk")
    assert ok.status_code == 200 and 1 < int(ok.headers["X-Tiles"]) <= 3
    interactive = post(gated.live.url, SIX_TILES, resolution="native")  # the same is an interactive request's
    assert interactive.status_code == 200 and interactive.headers["X-Tiles"] == "6"


def test_a_bulk_tiled_request_leaves_the_places_kept_for_interactive_ones(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    before = sum(gated.runs)
    waiting = posted(gated.live.url, FLAT)
    gated.wait_metric("segment_queue_depth", 1)
    decoded_before = decodes(gated)
    # 3 tiles are the bulk share, but one of its places is taken: refused, and before its decode.
    bulk = post(gated.live.url, THREE_TILES, resolution="native", priority="bulk")
    assert bulk.status_code == 503 and error_code(bulk) == "bulk_overloaded", bulk.text
    assert "Retry-After" in bulk.headers
    assert decodes(gated) == decoded_before
    assert httpx.get(f"{gated.live.url}/readyz").json()["queue_depth"] == 1
    # The places kept for interactive requests are still there: 3 more tiles of an interactive request are taken.
    interactive = posted(gated.live.url, THREE_TILES, resolution="native")
    gated.wait_metric("segment_queue_depth", 4)
    released(gated, [holder, waiting, interactive], before, 1 + 1 + 3)


def test_a_tiled_request_the_queue_has_no_room_for_is_refused_before_its_decode(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    before = sum(gated.runs)
    waiting = [posted(gated.live.url, THREE_TILES, resolution="native"), posted(gated.live.url, FLAT)]
    gated.wait_metric("segment_queue_depth", 4)
    decoded_before = decodes(gated)
    r = post(gated.live.url, SIX_TILES, resolution="native")
    assert r.status_code == 503 and error_code(r) == "overloaded" and "6 tiles" in r.text, r.text
    assert decodes(gated) == decoded_before  # the header told the count: nothing was decoded for it
    released(gated, [holder, *waiting], before, 1 + 3 + 1)


def test_a_bulk_flood_leaves_room_for_the_largest_interactive_tiled_request(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    before = sum(gated.runs)
    bulk = []
    for depth in (1, 2, 3):  # the bulk share filled
        bulk.append(posted(gated.live.url, FLAT, priority="bulk"))
        gated.wait_metric("segment_queue_depth", depth)
    more = post(gated.live.url, FLAT, priority="bulk")
    assert more.status_code == 503 and error_code(more) == "bulk_overloaded", more.text
    assert httpx.get(f"{gated.live.url}/readyz").json()["max_tiles"] == 6
    interactive = posted(gated.live.url, SIX_TILES, resolution="native")  # as many tiles as /readyz allows
    gated.wait_metric("segment_queue_depth", 9)
    released(gated, [holder, *bulk, interactive], before, 1 + 3 + 6)
    assert interactive.result().headers["X-Tiles"] == "6"


def test_readyz_names_the_tile_limit(gated: GatedServer) -> None:
    # SEGMENT_MAX_TILES 16, but 6 places are kept for interactive requests: what a bulk flood leaves them
    assert httpx.get(f"{gated.live.url}/readyz").json()["max_tiles"] == 6


@pytest.mark.parametrize("share", [0.1, 1 / 3, 0.5, 0.75, 0.9, 0.99, 1.0])
@pytest.mark.parametrize(("max_queue", "max_tiles"), [(64, 16), (8, 16), (9, 6), (1, 16)])
def test_an_interactive_request_may_run_in_as_many_tiles_as_a_bulk_one(share: float, max_queue: int,
                                                                       max_tiles: int) -> None:
    from service.metrics import Metrics
    from service.state import ServiceState

    settings = Settings(model_path=Path("unused.onnx"), max_queue=max_queue, max_tiles=max_tiles,
                        bulk_queue_share=share)
    state = ServiceState(settings, Metrics(), cache=None, pool=None, uploads=None, renders=None,  # type: ignore[arg-type]
                         render_pool=None, heavy_pool=None, loop_lag=None)  # type: ignore[arg-type]
    interactive, bulk = state.max_tiles(), state.max_tiles(bulk=True)
    assert 0 <= bulk <= interactive <= min(max_tiles, max_queue)  # a queue of one keeps its place: no bulk tiles
    assert bulk <= max_queue - state.kept_for_interactive  # a bulk request never needs the places kept
    if share <= 0.5:  # the places kept for interactive requests hold the largest one: no bulk flood refuses it
        assert interactive <= state.kept_for_interactive or state.kept_for_interactive == 0
