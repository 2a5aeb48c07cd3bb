"""In-process segmentation with the service's own pipeline, for the batch CLI's `--local` mode.

Nothing here re-implements a step: every answer comes from `service.core.pipeline.Pipeline`, exactly as
`POST /segment` makes it. A local answer carries the same JSON fields as the server's, except the result `id`
(there is no result cache in-process).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .client import SegmentResult
from .client_types import resolution_param
from .core.engine import Engine, load_engine
from .core.options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, EngineOptions
from .core.output_kinds import RenderOptions
from .core.pipeline import Pipeline, SegmentOptions
from .core.resolution import Resolution


class LocalSegmenter:
    """An ORT session in this process, answering like `SegmentClient.segment` does. Thread-safe."""

    def __init__(self, model_path: str | Path, *, providers: str = "auto", threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                 resolution: Resolution | None = None) -> None:
        """`resolution`: every `segment` call's unless it names its own, as `SegmentClient(resolution=...)`."""
        resolution_param(resolution)  # the client's ValueError for a value the service would refuse
        self.resolution = resolution
        options = EngineOptions(model_path=Path(model_path), providers=providers, intra_op_threads=threads or 0,
                                max_batch_size=batch_size)
        self.engine: Engine = load_engine(options)
        self.pipeline = Pipeline(self.engine, max_pixels=max_pixels, batch_size=batch_size)

    def labels(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps at original size for decoded RGB images, at the segmenter's `resolution`."""
        return self.pipeline.segment_images(images, self.resolution)

    def segment(self, data: bytes, output: str = "labels", *, alpha: float | None = None,
                format: str | None = None, tolerance: float | None = None,
                min_area: float | None = None, crf: bool = False,
                resolution: Resolution | None = None) -> SegmentResult:
        """Segment encoded image bytes. Bad input raises `service.core.errors.DecodeError` (its `code` is the one
        the service answers with); `crf=True` refines the mask with the dense CRF, as `POST /segment?crf=true`
        does (`service.core.crf.CrfUnavailable` without the crf extra). A `format` the output kind is not written
        in raises ValueError, as the service answers it 422. `resolution` above the model's input size segments in
        tiles, as `POST /segment?resolution=` does (without the server's bound on their number)."""
        resolution = self.resolution if resolution is None else resolution
        if crf and resolution is not None:  # as the service and the folder tool refuse it
            raise ValueError("crf=True refines at the model's input size: it cannot be combined with a resolution")
        resolution_param(resolution)
        render = RenderOptions(alpha=0.5 if alpha is None else alpha, format=format,
                               tolerance=1.0 if tolerance is None else tolerance, min_area=min_area)
        header = {"model": self.engine.name, "model_sha256": self.engine.sha256}
        options = SegmentOptions(output, render, crf=crf, resolution=resolution)
        answer = self.pipeline.segment(data, options, header)
        if isinstance(answer.body, dict):
            body = {**answer.body, "timing_ms": {k: round(v * 1000, 3) for k, v in answer.timing.items()}}
            content = json.dumps(body).encode()
        else:
            content = answer.body
        # The model in the header, as a server sends it: a JSON body is then never parsed again to find it.
        return SegmentResult(output=output, content=content, media_type=answer.media_type, result_id=None,
                             request_id=None, model_header=self.engine.sha256 or None)
