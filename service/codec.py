"""Decode and encode for `POST /segment`, off the event loop: the one place a request's codec work runs.

Decode + letterbox and resize back + render run in the app's thread pool. Worker processes were measured as an
alternative on an H200 (8 processes, deeplabv3_resnet101, 1024x768 JPEGs): the server's own CPU per request fell
from 24 to 10 ms, but throughput did not rise (212 vs 221 img/s at concurrency 32, 227 vs 244 at 64), because
the tensors and answers then cross process boundaries through one result thread. So threads stay; a faster
decoder or a GPU decoder plugs in here.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Any

import numpy as np

from . import outputs
from .engine import Engine, decode_and_prepare
from .imaging import LetterboxInfo
from .outputs.labelmap import LabelMap


class Codec:
    """Where `POST /segment` decodes its upload and encodes its answer."""

    def __init__(self, engine: Engine, threads: Executor, *, max_pixels: int) -> None:
        self.engine = engine
        self.threads = threads
        self.max_pixels = max_pixels

    async def decode(self, data: bytes, *, full_resolution: bool) -> tuple[np.ndarray, np.ndarray, LetterboxInfo]:
        """(the decoded image, the letterboxed tensor, its geometry); raises ApiError for bad bytes.

        Only an answer that shows the upload (an overlay) needs `full_resolution`."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, functools.partial(
            decode_and_prepare, self.engine, data, self.max_pixels, full_resolution=full_resolution))

    async def encode(self, kind: str, image: np.ndarray, labels: np.ndarray, info: LetterboxInfo,
                     header: dict[str, Any], **params: Any) -> tuple[bytes | dict[str, Any], str, LabelMap]:
        """The answer's body and media type, and the label map at the upload's size (for the results cache)."""
        label_map = LabelMap.from_model(labels, info)  # a view plus index maps: no full-size map is built
        body, media = await asyncio.get_running_loop().run_in_executor(self.threads, functools.partial(
            outputs.render_output, kind, image, label_map, self.engine.metadata, header, **params))
        return body, media, label_map
