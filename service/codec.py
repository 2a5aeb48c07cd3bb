"""Decode and encode for `POST /segment`: in the app's thread pool, or in worker processes.

Threads are the default and the cheapest on a small machine. On a GPU host the model is fast enough that the
codec work becomes the ceiling, and in threads of one Python process it serialises on the interpreter lock
(measured on an H100: 6-7 of 16 cores busy while each request's decode time tripled). `SEGMENT_CODEC_PROCESSES`
moves decode + letterbox and resize back + encode of every output but the overlay into that many processes;
the upload's bytes go in and the letterboxed tensor comes back (about 0.8 MB at 513), the model's label map
goes in and the encoded answer comes back. An overlay needs the full upload in the same process, so it stays
in threads.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import numpy as np

from . import outputs
from .contract import ModelMetadata
from .decode_budget import DECODE_BUDGET
from .engine import Engine, decode_and_prepare
from .imaging import LetterboxInfo, decode_image_for_model, letterbox
from .outputs.labelmap import LabelMap

# One worker process's view of the model: set by `_start_worker`.
_WORKER: dict[str, Any] = {}


def _start_worker(props: dict[str, str], max_pixels: int, decode_memory_bytes: int) -> None:
    _WORKER.update(meta=ModelMetadata.from_props(props), max_pixels=max_pixels)
    DECODE_BUDGET.set_capacity(decode_memory_bytes)  # this process's share of the pod's decode memory


def _ready(hold_s: float) -> bool:
    time.sleep(hold_s)  # held a moment, so that every task of the warm-up needs a process of its own
    return bool(_WORKER)


def _decode_in_worker(data: bytes) -> tuple[np.ndarray, LetterboxInfo]:
    meta: ModelMetadata = _WORKER["meta"]
    image, orig_hw = decode_image_for_model(data, _WORKER["max_pixels"], meta.input_size)
    return letterbox(image, meta.input_size, meta.pad_rgb, orig_hw=orig_hw)


def _encode_in_worker(kind: str, labels: np.ndarray, info: LetterboxInfo, header: dict[str, Any],
                      params: dict[str, Any]) -> tuple[bytes | dict[str, Any], str]:
    label_map = LabelMap.from_model(labels, info)
    return outputs.render_output(kind, None, label_map, _WORKER["meta"], header, **params)


class Codec:
    """Where `POST /segment` decodes its upload and encodes its answer."""

    def __init__(self, engine: Engine, threads: Executor, *, max_pixels: int, processes: int = 0,
                 decode_memory_bytes: int = 0) -> None:
        self.engine = engine
        self.threads = threads
        self.max_pixels = max_pixels
        self.processes: ProcessPoolExecutor | None = None
        if processes > 0:
            # spawn: the parent holds ORT sessions (and CUDA) and threads, which a fork must not copy.
            self.processes = ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                initargs=(engine.metadata.to_props(), max_pixels, max(1, decode_memory_bytes // processes)))
            self.process_count = processes

    def warm_up(self) -> None:
        """Start every worker process now (each imports the codecs), not on the first requests."""
        if self.processes is not None and not all(self.processes.map(_ready, [0.2] * self.process_count)):
            raise RuntimeError("a codec worker process did not start")

    async def decode(self, data: bytes, *, full_resolution: bool) -> tuple[np.ndarray | None, np.ndarray,
                                                                          LetterboxInfo]:
        """(the decoded image or None, the letterboxed tensor, its geometry); raises ApiError for bad bytes."""
        loop = asyncio.get_running_loop()
        if self.processes is not None and not full_resolution:
            tensor, info = await loop.run_in_executor(self.processes, _decode_in_worker, data)
            return None, tensor, info
        return await loop.run_in_executor(self.threads, functools.partial(
            decode_and_prepare, self.engine, data, self.max_pixels, full_resolution=full_resolution))

    async def encode(self, kind: str, image: np.ndarray | None, labels: np.ndarray, info: LetterboxInfo,
                     header: dict[str, Any], **params: Any) -> tuple[bytes | dict[str, Any], str, LabelMap]:
        """The answer's body and media type, and the label map at the upload's size (for the results cache)."""
        loop = asyncio.get_running_loop()
        label_map = LabelMap.from_model(labels, info)  # a view plus index maps: no full-size map is built
        if self.processes is not None and kind != "overlay":
            body, media = await loop.run_in_executor(self.processes, _encode_in_worker, kind, labels, info, header,
                                                     params)
        else:
            body, media = await loop.run_in_executor(self.threads, functools.partial(
                outputs.render_output, kind, image, label_map, self.engine.metadata, header, **params))
        return body, media, label_map

    def shutdown(self) -> None:
        if self.processes is not None:
            self.processes.shutdown(wait=False, cancel_futures=True)
