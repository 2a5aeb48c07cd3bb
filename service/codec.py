"""Decode and encode for `POST /segment`, off the event loop: the one place a request's codec work runs.

Decode + letterbox and resize back + render run in the app's thread pool; an upload that is expensive to decode
(many pixels in a format that cannot be decoded reduced, e.g. a 40 MP 32-bit TIFF: ~0.6 CPU-s) decodes in a
pool at lower CPU priority, so that a stream of them cannot multiply everyone else's latency (measured in
docs/RELIABILITY.md). Worker processes were measured as an
alternative on an H200 (8 processes, deeplabv3_resnet101, 1024x768 JPEGs): the server's own CPU per request fell
from 24 to 10 ms, but throughput did not rise (212 vs 221 img/s at concurrency 32, 227 vs 244 at 64), because
the tensors and answers then cross process boundaries through one result thread. So threads stay; a faster
decoder or a GPU decoder plugs in here.
"""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np
from PIL import Image

from . import crf, outputs
from .engine import Engine, decode_and_prepare
from .imaging import LetterboxInfo
from .outputs.labelmap import LabelMap

Decoded = tuple[np.ndarray, np.ndarray, LetterboxInfo]  # the image, the letterboxed tensor, its geometry

# Above this many pixels decoded at full size, a decode goes to the low-priority pool. A JPEG for the model is
# decoded reduced (at most ~4x the model's pixels), so only other formats and full-resolution overlays count.
HEAVY_DECODE_PIXELS = 16_000_000


def decoded_pixels(data: bytes, *, full_resolution: bool) -> int:
    """Pixels a decode of `data` will produce at full size, from its header (0 when the header is unreadable:
    the decode itself then answers with the error)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            reduced = img.format in ("JPEG", "MPO") and not full_resolution
    except Exception:  # hostile bytes: the real decode gives the documented 4xx
        return 0
    return 0 if reduced else width * height


class Codec:
    """Where `POST /segment` decodes its upload and encodes its answer."""

    def __init__(self, engine: Engine, threads: Executor, *, max_pixels: int,
                 heavy_threads: Executor | None = None) -> None:
        self.engine = engine
        self.threads = threads
        self.heavy_threads = heavy_threads or threads
        self.max_pixels = max_pixels

    async def decode(self, data: bytes, *, full_resolution: bool) -> Decoded:
        """(the decoded image, the letterboxed tensor, its geometry); raises ApiError for bad bytes.

        Only an answer that shows the upload (an overlay) needs `full_resolution`."""
        loop = asyncio.get_running_loop()
        decode = functools.partial(decode_and_prepare, self.engine, data, self.max_pixels,
                                   full_resolution=full_resolution)
        # The header is read in the pool, not on the event loop (~0.07 ms for a JPEG); a heavy upload then moves
        # to the low-priority pool.
        decoded = await loop.run_in_executor(self.threads, self._decode_unless_heavy, data, full_resolution, decode)
        return decoded if decoded is not None else await loop.run_in_executor(self.heavy_threads, decode)

    @staticmethod
    def _decode_unless_heavy(data: bytes, full_resolution: bool, decode: Callable[[], Decoded]) -> Decoded | None:
        if decoded_pixels(data, full_resolution=full_resolution) > HEAVY_DECODE_PIXELS:
            return None
        return decode()

    async def encode(self, kind: str, image: np.ndarray, labels: np.ndarray, info: LetterboxInfo,
                     header: dict[str, Any], *, crf_canvas: np.ndarray | None = None,
                     **params: Any) -> tuple[bytes | dict[str, Any], str, LabelMap]:
        """The answer's body and media type, and the label map at the upload's size (for the results cache).

        `crf_canvas` (the letterboxed image the model saw) refines the labels with DeepLab-v2's dense CRF first.
        """
        return await asyncio.get_running_loop().run_in_executor(self.threads, functools.partial(
            self._encode, kind, image, labels, info, header, crf_canvas, params))

    def _encode(self, kind: str, image: np.ndarray, labels: np.ndarray, info: LetterboxInfo,
                header: dict[str, Any], crf_canvas: np.ndarray | None,
                params: dict[str, Any]) -> tuple[bytes | dict[str, Any], str, LabelMap]:
        meta = self.engine.metadata
        if crf_canvas is not None:
            # The contract gives labels, not scores: the predicted class gets 0.7, as `evaluate --crf` does.
            probs = crf.probs_from_labels(labels, meta.num_classes)
            labels = crf.crf_on_canvas(crf_canvas, probs, info, crf.CrfParams())
        label_map = LabelMap.from_model(labels, info)  # a view plus index maps: no full-size map is built
        body, media = outputs.render_output(kind, image, label_map, meta, header, **params)
        return body, media, label_map
