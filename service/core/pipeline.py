"""The request pipeline: preprocess (decode, letterbox) → infer → postprocess (CRF, back to the upload's size)
→ render. One object, used by `POST /segment` (through `service.codec` and the batcher), the batch CLI's local
mode, `segment-export evaluate` and the benchmarks, so that what is measured and scored is what is served.

Each step is a method, because the service runs them in different places (decode and render in worker threads,
inference in the batcher, across requests); `segment` runs them all in a row for one upload.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from . import crf
from .decode import Upload, decode_image_for_model, decode_image_keeping_profile, open_upload
from .engine import Engine
from .icc import to_srgb
from .letterbox import LetterboxInfo, compute_letterbox, letterbox, letterbox_onto, unletterbox
from .options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS
from .output_kinds import OUTPUT_KINDS, Body, RenderOptions
from .outputs.labelmap import LabelMap
from .outputs.render import render
from .resolution import NATIVE, Resolution
from .tiles import TileGrid, grid_at


@dataclass(frozen=True)
class Prepared:
    """One upload ready for the model: the decoded RGB image (reduced unless asked for at full resolution; None
    once let go of, `without_image`), the letterboxed model input, and where the image sits in it."""

    image: np.ndarray | None
    tensor: np.ndarray
    info: LetterboxInfo
    # The RGB ICC profile whose numbers `image` kept (a full-size decode; `tensor` is sRGB all the same), or None.
    icc_profile: bytes | None = None
    # The tiles `tensor` runs in, when it is larger than the model's input (core/tiles.py); None: it runs whole.
    tiles: TileGrid | None = None

    @property
    def model_inputs(self) -> list[np.ndarray]:
        """What the model runs for this upload: the letterboxed tensor, or each of its tiles."""
        return [self.tensor] if self.tiles is None else self.tiles.split(self.tensor)

    def without_image(self) -> Prepared:
        """The same without the decoded image, for an answer that does not show it: a format that cannot decode
        reduced (PNG, TIFF) decodes at full size, and a 12 MP one kept 36 MB through the queue and the encode
        for nothing."""
        return replace(self, image=None)


@dataclass(frozen=True)
class SegmentOptions:
    """What one request asks for: the output kind, how to draw it, and whether to refine with the dense CRF."""

    output: str = "labels"
    render: RenderOptions = field(default_factory=RenderOptions)
    crf: bool = False
    resolution: Resolution | None = None  # the long side to segment at (see `Pipeline.canvas_size`)

    def __post_init__(self) -> None:
        # Each kind is written in its own formats only (`GET /outputs`): another is refused here, where the service
        # and the in-process backend both state what they ask for, rather than ignored by the renderer.
        kind = OUTPUT_KINDS.get(self.output)  # an unknown kind fails where its kind is first looked up, as before
        if kind is not None:
            kind.encoding(self.render.format)  # ValueError for a format the kind has not

    @property
    def full_resolution(self) -> bool:
        """Whether the upload must be decoded at full size (only kinds that show the image need it)."""
        return OUTPUT_KINDS[self.output].shows_image


@dataclass(frozen=True)
class Segmented:
    """An answer: its body (bytes, or a dict for JSON kinds), media type, the label map at the upload's size
    (a `LabelMap`, which the results cache keeps) and seconds per stage."""

    body: Body
    media_type: str
    label_map: LabelMap
    timing: dict[str, float]


class Pipeline:
    """The steps from upload bytes to an answer, around one loaded `Engine`. Thread-safe: it holds no state
    beyond the engine (whose `run_images` is thread-safe) and its limits.

    `max_pixels` bounds uploads (checked on the header); `batch_size` is how many images one model run takes
    when this object batches by itself (`label_maps`; the service's batcher forms its own batches).
    """

    def __init__(self, engine: Engine, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.engine = engine
        self.max_pixels = max_pixels
        self.batch_size = max(1, batch_size)

    # -- preprocess --------------------------------------------------------------------------------------------

    def open(self, data: bytes) -> Upload:
        """Upload bytes past the structure checks, their header read (`open_upload`; raises `DecodeError`): for a
        caller that must know the image's size before it decodes (`Upload.pixels`), then hands the `Upload` to
        `preprocess`, which neither checks nor reads the header again."""
        return open_upload(data, self.max_pixels)

    def canvas_size(self, height: int, width: int, resolution: Resolution | None = None) -> int:
        """The side of the letterbox an image of `height` x `width` is segmented at: the model's input size, or
        `resolution` (`native`: the image's long side) where that is larger."""
        size = self.engine.input_size
        if resolution is None:
            return size
        return max(size, max(height, width) if resolution == NATIVE else int(resolution))

    def tile_grid(self, height: int, width: int, resolution: Resolution | None = None) -> TileGrid | None:
        """The tiles an image of `height` x `width` runs in at `resolution`; None when it runs whole."""
        size = self.canvas_size(height, width, resolution)
        return None if size == self.engine.input_size else grid_at(height, width, size, self.engine.input_size)

    def preprocess(self, data: bytes | Upload, *, full_resolution: bool = False,
                   resolution: Resolution | None = None) -> Prepared:
        """Upload bytes (or an `Upload` from `open`) → `Prepared`. Raises `DecodeError` for bad bytes.

        Only an answer that shows the upload's pixels (an overlay) needs `full_resolution`; otherwise a large
        JPEG decodes reduced (`decode_image_for_model`, never below the letterbox) and the geometry still maps back
        to its original size. `resolution` above the model's input size segments it in tiles (`Prepared.tiles`).
        """
        size = self.engine.input_size
        if resolution is not None:
            data = data if isinstance(data, Upload) else self.open(data)
            width, height = data.image.size  # as stored: an EXIF turn keeps the long side
            size = self.canvas_size(height, width, resolution)
        if full_resolution:
            image, profile = decode_image_keeping_profile(data, self.max_pixels)
            prepared = self.prepare_image(image, resolution=resolution)
            if profile is None:
                return prepared
            # The upload keeps its profile's numbers (the overlay is drawn in it); the model sees sRGB: only the
            # letterbox content is converted, in place, and the padding keeps the model's pad colour exactly.
            # Measured, a 4032x3024 Display P3 JPEG overlay with the embedded 320 model: 351 -> 178 CPU-ms, as
            # without a profile (177): converting all 12 MP cost ~175, the 320x240 content costs ~1.1.
            info = prepared.info
            to_srgb(prepared.tensor[info.top : info.top + info.new_h, info.left : info.left + info.new_w], profile,
                    "RGB")
            return replace(prepared, icc_profile=profile)
        image, orig_hw = decode_image_for_model(data, self.max_pixels, size)
        return self.prepare_image(image, orig_hw, resolution)

    def prepare_image(self, image: np.ndarray, orig_hw: tuple[int, int] | None = None,
                      resolution: Resolution | None = None) -> Prepared:
        """Letterbox a decoded RGB image to the model's square input (padding in the model's mean colour), or to
        `resolution` in tiles of it when that is larger.

        `orig_hw`: the original size when `image` was decoded reduced."""
        height, width = orig_hw or image.shape[:2]
        size, pad = self.canvas_size(height, width, resolution), self.engine.metadata.pad_rgb
        if size == self.engine.input_size:
            tensor, info = letterbox(image, size, pad, orig_hw=orig_hw)
            return Prepared(image, tensor, info)
        # Tiled: the canvas only as large as the tiles reach, not size x size (a 4000x10 panorama at 3500 would
        # hold 37 MB for one row of tiles); the geometry is the letterbox's at `size` all the same.
        info = compute_letterbox(height, width, size)
        tiles = TileGrid.covering(info.new_h, info.new_w, self.engine.input_size)
        return Prepared(image, letterbox_onto(image, info, *tiles.extent, pad), info, tiles=tiles)

    # -- infer -------------------------------------------------------------------------------------------------

    def infer(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        """Labels [N, size, size] for letterboxed tensors, in one model run (the engine pads to its buckets)."""
        return self.engine.run_images(tensors)

    def infer_all(self, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Labels for any number of model inputs, in runs of at most `batch_size`."""
        labels: list[np.ndarray] = []
        for start in range(0, len(tensors), self.batch_size):
            labels.extend(self.infer(tensors[start : start + self.batch_size]))
        return labels

    # -- postprocess -------------------------------------------------------------------------------------------

    @staticmethod
    def joined(labels: np.ndarray | Sequence[np.ndarray], prepared: Prepared) -> np.ndarray:
        """The letterboxed label map of `prepared`: the model's labels for its `model_inputs`, its tiles' stitched
        into one (a single input's labels as they are)."""
        if prepared.tiles is None:
            return labels if isinstance(labels, np.ndarray) and labels.ndim == 2 else labels[0]
        return prepared.tiles.stitch(labels)

    def postprocess(self, labels: np.ndarray | Sequence[np.ndarray], prepared: Prepared, *,
                    refine: bool = False) -> LabelMap:
        """The model's letterboxed labels (for a tiled upload, its tiles' labels, stitched here) → the map at the
        upload's size (a `LabelMap`: no full-size copy).

        `refine` runs DeepLab-v2's dense CRF on the image the model saw first; the contract gives labels, not
        scores, so the predicted class gets 0.7, as `segment-export evaluate --crf` does."""
        labels = self.joined(labels, prepared)
        if refine:  # in this thread; the service refines in its CRF processes instead (service.codec)
            labels = crf.refine_labels(prepared.tensor, labels, prepared.info, self.engine.metadata.num_classes)
        return LabelMap.from_model(labels, prepared.info)

    # -- render ------------------------------------------------------------------------------------------------

    def render(self, output: str, prepared: Prepared, label_map: LabelMap, options: RenderOptions,
               header: dict[str, Any] | None = None) -> tuple[Body, str]:
        """Body and media type of `output` (see `service.core.output_kinds`)."""
        image = prepared.image if OUTPUT_KINDS[output].shows_image else None
        if image is not None and prepared.icc_profile is not None:
            options = replace(options, icc_profile=prepared.icc_profile)
        return render(output, image, label_map, self.engine.metadata, options, header)

    def warm_outputs(self) -> float:
        """Decode a small JPEG and render every output kind (each overlay format too) from a made-up answer, so
        that what the libraries load or build on first use is paid before the service reports ready rather than
        by the first request of each kind: the first `stats` and `polygons` answers of a fresh server took 14-16
        ms more to encode than the next ones (measured; 8 ms of it `numpy.ma`, which `np.unique` imported on its
        first call, before the statistics stopped calling it). Returns the seconds it took."""
        start = time.perf_counter()
        height, width = 48, 64  # smaller than any model input: nothing big is allocated
        image = np.zeros((height, width, 3), np.uint8)
        image[:, width // 2:] = (200, 120, 40)
        with io.BytesIO() as buffer:
            Image.fromarray(image).save(buffer, format="JPEG")
            # Under its own pixel count, not the uploads' `max_pixels`: a limit set below this image is the
            # uploads' business, and a warm-up failing on it would be taken for a failing device.
            decoded, orig_hw = decode_image_for_model(buffer.getvalue(), height * width, self.engine.input_size)
        # Kinds that show the image render on a full-size decode, as `preprocess(full_resolution=True)` gives them:
        # for a model input under 48x64 the decode above is reduced, and its pixels no longer match the labels.
        prepared = {False: self.prepare_image(decoded, orig_hw), True: self.prepare_image(image)}
        size = self.engine.input_size
        labels = np.zeros((size, size), np.uint8)
        labels[: size // 2, : size // 2] = min(1, self.engine.metadata.num_classes - 1)  # a region and a hole
        labels[size // 8 : size // 4, size // 8 : size // 4] = 0
        label_map = self.postprocess(labels, prepared[False])
        for name, kind in OUTPUT_KINDS.items():
            for encoding in kind.encodings:
                self.render(name, prepared[kind.shows_image], label_map, RenderOptions(format=encoding.format),
                            {"id": "", "model": ""})
        return time.perf_counter() - start

    # -- all steps ---------------------------------------------------------------------------------------------

    def segment(self, data: bytes, options: SegmentOptions,
                header: dict[str, Any] | None = None) -> Segmented:
        """One upload through every step in this thread, as `POST /segment` answers it."""
        t0 = time.perf_counter()
        prepared = self.preprocess(data, full_resolution=options.full_resolution, resolution=options.resolution)
        t1 = time.perf_counter()
        labels = self.infer_all(prepared.model_inputs)
        t2 = time.perf_counter()
        label_map = self.postprocess(labels, prepared, refine=options.crf)
        body, media = self.render(options.output, prepared, label_map, options.render, header)
        timing = {"decode": t1 - t0, "inference": t2 - t1, "encode": time.perf_counter() - t2}
        return Segmented(body, media, label_map, timing)

    def label_maps(self, prepared: Sequence[Prepared]) -> list[np.ndarray]:
        """Label maps at the uploads' sizes (plain arrays), in model runs of at most `batch_size` images."""
        inputs = [p.model_inputs for p in prepared]  # a tiled upload's tiles run in the same batches as the rest
        labels = self.infer_all([tensor for each in inputs for tensor in each])
        results: list[np.ndarray] = []
        for p, count in zip(prepared, map(len, inputs), strict=True):
            results.append(unletterbox(self.joined(labels[:count], p), p.info))
            labels = labels[count:]
        return results

    def segment_images(self, images: Sequence[np.ndarray], resolution: Resolution | None = None) -> list[np.ndarray]:
        """Label maps at original size for decoded RGB uint8 images (at `resolution`: see `prepare_image`)."""
        return self.label_maps([self.prepare_image(image, resolution=resolution) for image in images])
