"""What a request's `resolution` may ask, judged from the upload's header before its decode: the size it is shown
at (EXIF-turned), and the 422s of a request whose tiles the server will not run (service/core/tiles.py)."""

from __future__ import annotations

from .core.orientation import exif_orientation
from .core.pipeline import SegmentOptions
from .core.tiles import highest_size
from .core.upload import Upload
from .errors import ApiError


def upright_size(upload: Upload) -> tuple[int, int]:
    """Height and width of the upload as shown, turned by its EXIF orientation (read from the header alone)."""
    width, height = upload.image.size
    turned = exif_orientation(upload.image, upload.data) in (5, 6, 7, 8)  # those swap the sides
    return (width, height) if turned else (height, width)


def check_tiles(count: int, canvas: int, height: int, width: int, options: SegmentOptions, input_size: int,
                 max_tiles: int) -> None:
    """422 for a request that would run in `count` tiles (a letterbox of side `canvas`): `invalid_request` with
    the CRF (it refines one letterboxed image in a worker process, at a cost that grows with its pixels),
    `too_many_tiles` beyond `max_tiles`, naming the highest resolution that would fit."""
    if options.crf:
        raise ApiError(422, "invalid_request", f"crf=true refines at the model's input size ({input_size}); it "
                       "cannot be combined with a resolution above it")
    if count > max_tiles:
        fits = highest_size(height, width, input_size, max_tiles, below=canvas)
        raise ApiError(422, "too_many_tiles", f"resolution {options.resolution} needs {count} tiles of the model's "
                       f"{input_size}x{input_size} input for this {width}x{height} image; this server runs at most "
                       f"{max_tiles} for one request: ask for a resolution of at most {fits}",
                       details={"max_resolution": fits})
