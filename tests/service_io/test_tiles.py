"""Tiled inference's geometry (service/core/tiles.py) and the pipeline that runs it: the tiles cover the content
with the overlap promised, each pixel comes from the tile it lies deepest in, and on the rule model (a per-pixel
function of the colour) a tiled answer is the whole canvas run in one piece, whatever the size and the shape."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from service.core.pipeline import Pipeline
from service.core.tiles import TileGrid, grid_at, highest_size, tile_starts
from tests.service.svc_helpers import rule_pipeline, scene
from tests.service.tile_helpers import canvas_side, expected_tiles, one_piece_labels, thin_lines

TILE = 32


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return rule_pipeline(tmp_path_factory.mktemp("tiles"), input_size=TILE)


@pytest.mark.parametrize("tile", [3, 32, 96, 513])
def test_tile_starts_cover_the_axis_from_0_to_its_end_with_a_third_of_overlap(tile: int) -> None:
    for length in [1, tile - 1, tile, tile + 1, tile + 2, 2 * tile - 1, 2 * tile, 3 * tile + 7, 10 * tile + 1]:
        if length < 1:
            continue
        starts = tile_starts(length, tile)
        if length <= tile:
            assert starts == (0,), (length, tile)
            continue
        assert starts[0] == 0 and starts[-1] + tile == length, (length, tile, starts)
        assert list(starts) == sorted(set(starts)), starts  # strictly increasing: no tile twice
        assert len(starts) == expected_tiles(length, tile), (length, tile, starts)
        for start, following in itertools.pairwise(starts):
            assert start + tile - following >= tile / 3, (length, tile, starts)  # shared with the neighbour
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start : start + tile] = True
        assert covered.all()


def _owner(position: int, starts: tuple[int, ...], tile: int) -> int:
    """The tile a stitch should take `position` from, worked out from the overlaps: past the middle of the overlap
    with the next tile, the next one (a pixel exactly at a half-pixel middle may go either way: checked apart)."""
    index = 0
    for i, (start, following) in enumerate(itertools.pairwise(starts)):
        middle = (following + start + tile) / 2  # the overlap is [following, start + tile)
        if position >= middle:
            index = i + 1
    return index


@pytest.mark.parametrize(("height", "width"), [(32, 32), (20, 75), (75, 20), (64, 100), (33, 97), (150, 150)])
def test_stitch_takes_each_pixel_from_the_tile_it_lies_deepest_in(height: int, width: int) -> None:
    grid = TileGrid.covering(height, width, TILE)
    tiles = [np.full((TILE, TILE), index + 1, np.uint8) for index in range(len(grid))]  # each tile's own number
    out = grid.stitch(tiles)
    assert out.shape == grid.extent == (max(height, TILE), max(width, TILE))  # as far as the tiles reach
    assert (out[height:] == 0).all() and (out[:, width:] == 0).all()  # the padding beyond the content
    columns = len(grid.cols)
    for y, x in itertools.product(range(height), range(width)):
        row, col = divmod(int(out[y, x]) - 1, columns)
        assert grid.rows[row] <= y < grid.rows[row] + TILE and grid.cols[col] <= x < grid.cols[col] + TILE
        for position, starts, chosen in ((y, grid.rows, row), (x, grid.cols, col)):
            want = _owner(position, starts, TILE)
            if chosen != want:  # only a pixel at the exact middle of an overlap of odd width may be either
                middle = (starts[want] + starts[chosen] + TILE) / 2 if chosen > want else None
                assert middle is not None and position + 0.5 == middle, (y, x, chosen, want, starts)


def test_stitch_cuts_each_overlap_in_its_middle() -> None:
    grid = TileGrid.covering(32, 200, TILE)  # one row: 8 tiles along x
    row = grid.stitch([np.full((TILE, TILE), i, np.uint8) for i in range(len(grid))])[0]
    cut_at = [x for x in range(1, 200) if row[x] != row[x - 1]]
    assert list(row[[0, *cut_at]]) == list(range(len(grid)))  # every tile in turn, in order
    assert len(cut_at) == len(grid.cols) - 1
    for cut, (start, following) in zip(cut_at, itertools.pairwise(grid.cols), strict=True):
        middle = (following + start + TILE) / 2
        assert abs(cut - middle) <= 0.5, (cut, start, following)
        # half the overlap of context, or within a pixel of it, on each side of the cut
        assert min(cut - following, start + TILE - cut) >= (start + TILE - following) // 2 - 1


def test_stitch_refuses_a_wrong_number_of_label_maps() -> None:
    grid = TileGrid.covering(64, 64, TILE)
    labels = [np.zeros((TILE, TILE), np.uint8)] * len(grid)
    for wrong in (labels[:-1], [*labels, labels[0]], []):
        with pytest.raises(ValueError, match="label maps"):
            grid.stitch(wrong)


@pytest.mark.parametrize(("height", "width", "max_tiles"),
                         [(100, 150, 4), (150, 100, 6), (3000, 4000, 16), (1000, 10, 3), (64, 64, 1), (77, 31, 9)])
def test_highest_size_is_the_largest_size_that_fits(height: int, width: int, max_tiles: int) -> None:
    below = 400
    fitting = [size for size in range(TILE, below) if len(grid_at(height, width, size, TILE)) <= max_tiles]
    assert highest_size(height, width, TILE, max_tiles, below=below) == max(fitting)


IMAGES = {"landscape": scene(150, 100), "tall": scene(40, 130), "wide": scene(200, 30), "tiny": scene(5, 3),
          "lines": thin_lines(120, 90)}


@pytest.mark.parametrize("resolution", [33, 50, 64, 100, 141, "native"])
@pytest.mark.parametrize("name", IMAGES)
def test_a_tiled_segmentation_is_the_canvas_run_in_one_piece(pipeline: Pipeline, name: str,
                                                              resolution: int | str) -> None:
    image = IMAGES[name]
    side = canvas_side(pipeline.engine, *image.shape[:2], resolution)
    prepared = pipeline.prepare_image(image, resolution=resolution)
    assert prepared.info.size == side
    if side > TILE:  # it did run in tiles, every one the model's input, on a canvas as large as they reach
        assert prepared.tiles is not None and len(prepared.model_inputs) == len(prepared.tiles) > 1
        assert prepared.tensor.shape[:2] == prepared.tiles.extent
        assert prepared.tiles.extent == (max(prepared.info.new_h, TILE), max(prepared.info.new_w, TILE))
    else:
        assert prepared.tensor.shape[:2] == (side, side)
        assert all(tile.shape == (TILE, TILE, 3) for tile in prepared.model_inputs)
    (got,) = pipeline.segment_images([image], resolution=resolution)
    np.testing.assert_array_equal(got, one_piece_labels(pipeline.engine, image, resolution))


def test_a_one_pixel_line_lost_at_the_input_size_is_kept_in_tiles(pipeline: Pipeline) -> None:
    image = thin_lines(120, 90)
    (small,) = pipeline.segment_images([image])
    (tiled,) = pipeline.segment_images([image], resolution="native")
    column = 120 // 2 + 1
    assert not (small[:, column] == 1).any()  # shrunk 4x, the dim red line is background
    assert (tiled[:, column] == 1).sum() > 80  # at full size it is red down its length


def test_label_maps_give_each_image_its_own_map_when_tiled_and_whole_ones_mix(tmp_path: Path) -> None:
    engine = rule_pipeline(tmp_path, input_size=TILE).engine
    batched = Pipeline(engine, batch_size=3)  # runs that cut across the images' tiles
    asked = [(IMAGES["landscape"], 100), (IMAGES["tiny"], None), (IMAGES["tall"], "native"),
             (IMAGES["wide"], None), (IMAGES["lines"], 64)]
    maps = batched.label_maps([batched.prepare_image(image, resolution=res) for image, res in asked])
    assert len(maps) == len(asked)
    for got, (image, res) in zip(maps, asked, strict=True):
        np.testing.assert_array_equal(got, one_piece_labels(engine, image, res))


def test_a_tiled_canvas_is_only_as_large_as_its_tiles_reach_and_caches_nothing(pipeline: Pipeline) -> None:
    from service.core.letterbox import _pad_canvas

    panorama = scene(400, 3)  # a strip: one row of tiles
    cached = _pad_canvas.cache_info().currsize
    for resolution in (300, 310, 320, 330, 340):
        prepared = pipeline.prepare_image(panorama, resolution=resolution)
        assert prepared.tiles is not None and len(prepared.tiles.rows) == 1
        assert prepared.tensor.shape == (TILE, resolution, 3)  # not resolution x resolution
    # Sizes a client chooses make no cached pad canvas each (it would keep one per size, for good).
    assert _pad_canvas.cache_info().currsize == cached


def test_a_tiled_requests_images_join_the_line_together() -> None:
    import asyncio

    from service.batcher import Batcher
    from service.tiled_inference import infer_inputs

    ran: list[int] = []

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        ran.extend(int(image[0, 0, 0]) for image in images)
        return np.zeros((len(images), *images[0].shape[:2]), np.uint8)

    def tagged(value: int) -> np.ndarray:
        return np.full((TILE, TILE, 3), value, np.uint8)

    async def scenario() -> None:
        batcher = Batcher(run_images, max_batch_size=1, max_wait_ms=0, max_queue=8, concurrency=1)
        batcher.start()
        # The untiled request's task is scheduled right after the tiled one has checked its room: it must not take
        # a place between the tiled request's images.
        tiled = infer_inputs(batcher, [tagged(1), tagged(2), tagged(3)], 30, "tiled")
        alone = batcher.infer(tagged(9), 30, "alone")
        labelled, _ = await asyncio.gather(tiled, alone)
        assert len(labelled.labels) == 3 and len(labelled.queue_waits) == 3
        await batcher.stop(1)

    asyncio.run(scenario())
    assert ran == [1, 2, 3, 9]
