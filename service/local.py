"""In-process segmentation with the service's own code path, for the batch CLI's `--local` mode.

Nothing here re-implements a step: decode + letterbox is `service.engine.decode_and_prepare`, ORT → unletterbox
is `service.engine.run_prepared`, and the bytes come from `service.outputs.render_output`, exactly as
`POST /segment` makes them. A local answer carries the same JSON fields as the server's, except the
result `id` (there is no result cache in-process).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import outputs
from .client import SegmentResult
from .engine import Engine, decode_and_prepare, load_engine, run_prepared, segment_images
from .settings import Settings


class LocalSegmenter:
    """An ORT session in this process, answering like `SegmentClient.segment` does. Thread-safe."""

    def __init__(self, model_path: str | Path, *, providers: str = "auto", threads: int | None = None) -> None:
        overrides: dict[str, Any] = {"model_path": Path(model_path), "providers": providers}
        if threads:
            overrides["intra_op_threads"] = threads
        self.settings = Settings(**overrides)
        self.engine: Engine = load_engine(self.settings)

    def labels(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps at original size for decoded RGB images."""
        return segment_images(self.engine, images, batch_size=self.settings.max_batch_size)

    def segment(self, data: bytes, output: str = "labels", *, alpha: float | None = None,
                format: str | None = None, tolerance: float | None = None,
                min_area: float | None = None) -> SegmentResult:
        """Segment encoded image bytes. Bad input raises `service.errors.ApiError`, as the service answers it."""
        t0 = time.perf_counter()
        image, tensor, info = decode_and_prepare(self.engine, data, self.settings.max_pixels,
                                                 full_resolution=output == "overlay")
        t1 = time.perf_counter()
        (labels,) = run_prepared(self.engine, [(tensor, info)])
        t2 = time.perf_counter()
        body, media = outputs.render_output(output, image, labels, self.engine.metadata,
                                            {"model": self.engine.name},
                                            alpha=0.5 if alpha is None else alpha, fmt=format or "jpeg",
                                            tolerance=1.0 if tolerance is None else tolerance,
                                            min_area=min_area)
        timing = {"decode": t1 - t0, "inference": t2 - t1, "encode": time.perf_counter() - t2}
        if isinstance(body, dict):
            body = {**body, "timing_ms": {k: round(v * 1000, 3) for k, v in timing.items()}}
            content = json.dumps(body).encode()
        else:
            content = body
        return SegmentResult(output=output, content=content, media_type=media, result_id=None, request_id=None)
