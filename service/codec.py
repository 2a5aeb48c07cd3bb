"""Decode and encode for `POST /segment`, off the event loop: the one place a request's codec work runs.

Decode + letterbox and resize back + render run in the app's thread pool; an upload that is expensive to decode
(many pixels in a format that cannot be decoded reduced, e.g. a 40 MP 32-bit TIFF: ~0.6 CPU-s) decodes in a
pool at lower CPU priority, so that a stream of them cannot multiply everyone else's latency (measured in
docs/RELIABILITY.md). Worker processes were measured as an
alternative on an H200 (8 processes, deeplabv3_resnet101, 1024x768 JPEGs): the server's own CPU per request fell
from 24 to 10 ms, but throughput did not rise (212 vs 221 img/s at concurrency 32, 227 vs 244 at 64), because
the tensors and answers then cross process boundaries through one result thread. So threads stay; a faster
decoder or a GPU decoder plugs in at `service.core.pipeline`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from .admission import bulk_overloaded, overloaded
from .core.crf import CrfBusy, CrfFailed, CrfPlace, CrfPool
from .core.decode import Upload
from .core.errors import DecodeError
from .core.handoff import WorkerThreads
from .core.output_kinds import json_bytes
from .core.outputs.labelmap import LabelMap
from .core.pipeline import Pipeline, Prepared, SegmentOptions
from .core.resolution import Resolution
from .errors import ApiError

# Above this many pixels decoded at full size, a decode goes to the low-priority pool. A JPEG for the model is
# decoded reduced (at most ~4x the model's pixels), so only other formats and full-resolution overlays count.
HEAVY_DECODE_PIXELS = 16_000_000

# An encode is taken from the codec queue before any decode waiting there (priority 0): its request's model run is
# done, so finishing it first cuts the latency of requests that are nearly done and frees what they hold (tensors,
# decoded image, labels: service/request_memory.py) sooner, rather than holding it behind newer requests' decodes.
# Decodes cannot starve: every encode follows a decode that has finished.
ENCODE_PRIORITY = 1
# An interactive request's codec jobs are taken before every bulk request's (`priority=bulk`, service/batch_line.py):
# on a CPU shared by a flood of offline work, a decode waiting behind the flood's decodes cost an interactive request
# as much as the flood's wait in the inference queue.
INTERACTIVE_BOOST = 2


def _boosted(priority: int, bulk: bool) -> int:
    """A codec job's priority in `WorkerThreads`: interactive requests' above every bulk one's."""
    return priority if bulk else priority + INTERACTIVE_BOOST


def _ignore(_label_map: LabelMap) -> bool:
    return False


@contextlib.contextmanager
def _closed_if_raising(upload: Upload) -> Iterator[None]:
    """Close the opened upload if the block raises (else whoever decodes it closes it)."""
    try:
        yield
    except BaseException:
        upload.close()
        raise


def full_size_pixels(upload: Upload, full_resolution: bool, resolution: Resolution | None = None) -> int:
    """Pixels the decode of an opened upload produces at full size: what sends it to the low-priority pool
    beyond `HEAVY_DECODE_PIXELS`. A JPEG for the model at its input size is decoded reduced (at most ~4x the model's
    pixels): 0; at a higher `resolution` it may not be."""
    return 0 if upload.is_jpeg and not full_resolution and resolution is None else upload.pixels


class Codec:
    """Where `POST /segment` runs the pipeline's CPU steps (preprocess; postprocess + render), off the loop."""

    def __init__(self, pipeline: Pipeline, threads: WorkerThreads, *, heavy_threads: WorkerThreads | None = None,
                 crf: CrfPool | None = None) -> None:
        self.pipeline = pipeline
        self.threads = threads
        self.heavy_threads = heavy_threads or threads
        self.crf = crf  # None: `crf=true` refines in the codec thread, holding the interpreter lock throughout

    async def decode(self, data: bytes, *, full_resolution: bool,
                     before_decode: Callable[[Upload], object] | None = None, bulk: bool = False,
                     resolution: Resolution | None = None) -> Prepared:
        """The upload, preprocessed; raises `ApiError` for bad bytes (the decode error's code, as HTTP). A `bulk`
        request's decode waits for every interactive request's codec job queued.

        `before_decode(upload)` is called in the codec thread once the header has been read, before a pixel is
        decoded: the route reserves there what the decode will hold, and its refusal (an exception) is raised
        here with nothing decoded."""
        # The structure checks and the header read run once, in the pool, not on the event loop (~0.07 ms for a
        # JPEG); a heavy upload then moves, opened, to the low-priority pool.
        done = await self.threads.run(self._decode_unless_heavy, data, full_resolution, before_decode, resolution,
                                      priority=_boosted(0, bulk))
        if isinstance(done, Prepared):
            return done
        return await self.heavy_threads.run(self._preprocess, done, full_resolution, resolution,
                                            priority=_boosted(0, bulk))

    def _preprocess(self, data: bytes | Upload, full_resolution: bool, resolution: Resolution | None) -> Prepared:
        try:
            return self.pipeline.preprocess(data, full_resolution=full_resolution, resolution=resolution)
        except DecodeError as exc:
            raise ApiError.from_decode(exc) from None

    def _decode_unless_heavy(self, data: bytes, full_resolution: bool,
                             before_decode: Callable[[Upload], object] | None,
                             resolution: Resolution | None) -> Prepared | Upload:
        """The upload decoded here, or opened only (the checks and the header read) when it is heavy."""
        try:
            upload = self.pipeline.open(data)
        except DecodeError as exc:
            raise ApiError.from_decode(exc) from None
        if before_decode is not None:
            with _closed_if_raising(upload):
                before_decode(upload)
        if full_size_pixels(upload, full_resolution, resolution) > HEAVY_DECODE_PIXELS:
            return upload
        return self._preprocess(upload, full_resolution, resolution)

    def reserve_crf(self, options: SegmentOptions, bulk: bool = False) -> CrfPlace | None:
        """The CRF place of a `crf=true` request, taken at its admission, before its decode and model run (None
        without one, or without a pool): 503 `overloaded` when every place is taken, `bulk_overloaded` when a bulk
        request finds the bulk share of them taken. The caller releases it (`CrfPlace.release`) when the request
        ends; the refinement, once handed it, keeps it until its worker is done."""
        if not options.crf or self.crf is None:
            return None
        try:
            return self.crf.reserve(bulk)
        except CrfBusy as exc:
            raise (bulk_overloaded if exc.bulk else overloaded)(f"dense CRF: {exc}") from None

    async def encode(self, prepared: Prepared, labels: np.ndarray | list[np.ndarray], options: SegmentOptions,
                     header: dict[str, Any], keep: Callable[[LabelMap], bool] = _ignore,
                     crf_place: CrfPlace | None = None, bulk: bool = False) -> tuple[bytes, str, bool]:
        """The answer's body and media type, and whether `keep(label map at the upload's size)` stored it for
        `/results` (in the same job: off the event loop, where under several workers it is a file write). A JSON
        kind's `id` (from `header`) is null when it was not kept: a result id nobody can fetch only sends a client
        to a 404. A JSON body comes serialised here too: a large one (polygons: megabytes) would otherwise stall
        the event loop."""
        if options.crf and self.crf is not None:  # never tiled (the route refuses it): no stitch on the loop
            labels = await self._refined(prepared, self.pipeline.joined(labels, prepared), crf_place)
            options = replace(options, crf=False)  # refined: the codec thread has only the rest to do
        return await self.threads.run(self._encode, prepared, labels, options, header, keep,
                                      priority=_boosted(ENCODE_PRIORITY, bulk))

    async def _refined(self, prepared: Prepared, labels: np.ndarray, place: CrfPlace | None) -> np.ndarray:
        """The dense CRF's labels, from a worker process (`CrfPool`), in `place` (None: one taken now): 503
        `overloaded` when its places are taken, 500 when its worker died."""
        assert self.crf is not None
        try:
            return await self.crf.refine(prepared.tensor, labels, prepared.info,
                                         self.pipeline.engine.metadata.num_classes, place=place)
        except CrfBusy as exc:
            raise overloaded(f"dense CRF: {exc}") from None
        except CrfFailed as exc:
            raise ApiError(500, "internal_error", str(exc)) from None

    def _encode(self, prepared: Prepared, labels: np.ndarray | list[np.ndarray], options: SegmentOptions,
                header: dict[str, Any], keep: Callable[[LabelMap], bool]) -> tuple[bytes, str, bool]:
        label_map = self.pipeline.postprocess(labels, prepared, refine=options.crf)
        kept = keep(label_map)  # first: the store takes the map bare, whatever a render caches on it later
        body, media = self.pipeline.render(options.output, prepared, label_map, options.render,
                                           header if kept else {**header, "id": None})
        return (json_bytes(body) if isinstance(body, dict) else body), media, kept
