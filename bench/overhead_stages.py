"""CPU-ms per stage of one request, in-process and single-threaded, for the overhead benchmark.

Run as a script with the checkout under test first on PYTHONPATH (`bench.overhead_bench` does that for the
"before" and "after" trees), so the same measurement drives two versions of `service`:

    PYTHONPATH=<checkout> python bench/overhead_stages.py <model.onnx> <upload.jpg> <reps> [kinds]

`kinds` is a comma list (default labels,stats,polygons; color and overlay too, the overlay rendered over the
upload decoded in full). Prints one JSON object: {kind: {stage: cpu_ms}} plus "model" (the model's own CPU-ms
per image at one intra-op thread). Stages: `decode` (bytes → letterboxed tensor), `resize` (the model's map back
to the upload's size, or to a `LabelMap` where the version has one), `render` (body: PNG or dict), `serialize`
(the JSON response body).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

KINDS = ("labels", "stats", "polygons")


def cpu_ms(fn: Callable[[], Any], reps: int) -> float:
    """Mean process CPU-ms of `fn` over `reps` calls after one warm-up call: the process's, not the thread's,
    so work a library hands to its own threads (OpenCV's pool) is counted too."""
    fn()
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps * 1000


def as_the_server_runs() -> None:
    """OpenCV's thread count as the tree's server sets it (older trees left OpenCV's default)."""
    try:
        from service.settings import Settings

        threads = Settings().opencv_threads
    except (ImportError, AttributeError):
        return
    import cv2

    cv2.setNumThreads(threads)


def model_cpu_ms(engine: Any, tensor: Any, reps: int) -> float:
    """Process CPU-ms per image of the model alone (one intra-op thread, batch of one)."""
    batch = tensor[None]
    engine.run(batch)
    start = time.process_time()
    for _ in range(reps):
        engine.run(batch)
    return (time.process_time() - start) / reps * 1000


def measure(model: str, data: bytes, reps: int, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    serialize: Callable[[Any], Any]
    try:  # how POST /segment serialises a JSON answer: this tree in the codec thread, older ones by response class
        from service.core.output_kinds import json_bytes as serialize
    except ImportError:
        try:
            from service.routes.segment import FreshJSONResponse as serialize  # type: ignore[assignment,no-redef]
        except ImportError:
            from starlette.responses import JSONResponse as serialize  # type: ignore[assignment,no-redef]

    try:  # this tree: the core's pipeline
        from service.core.engine import load_engine
        from service.core.options import EngineOptions
        from service.core.output_kinds import RenderOptions
        from service.core.outputs.render import render as render_with_options

        def render_output(kind: str, image: Any, labels: Any, meta: Any, header: Any) -> Any:
            return render_with_options(kind, image, labels, meta, RenderOptions(), header)
        from service.core.outputs.labelmap import LabelMap
        from service.core.pipeline import Pipeline

        pipeline = Pipeline(load_engine(EngineOptions(model_path=model, intra_op_threads=1)))
        engine = pipeline.engine

        def decode_fn() -> Any:
            prepared = pipeline.preprocess(data)
            return prepared.tensor, prepared.info

        def back_fn(small: Any, info: Any) -> Any:  # what `Pipeline.postprocess` does without the CRF
            return LabelMap.from_model(small, info)
    except ImportError:  # an older tree, before the core package
        from service.outputs import render_output  # type: ignore[no-redef]

        from service import engine as engine_mod  # type: ignore[no-redef]
        from service.settings import Settings

        engine = engine_mod.load_engine(Settings(model_path=model, intra_op_threads=1))

        def decode_fn() -> Any:
            return engine_mod.decode_and_prepare(engine, data, 40_000_000)[1:]

        def back_fn(small: Any, info: Any) -> Any:
            try:  # newer versions keep the model-size map and its index maps instead of resizing up front
                from service.outputs.labelmap import LabelMap
            except ImportError:
                return engine_mod.finish(small, info)
            return LabelMap.from_model(small, info)

    header = {"id": "0" * 22, "model": engine.name}
    tensor, info = decode_fn()
    small = engine.run(tensor[None])[0]
    result: dict[str, Any] = {"model": model_cpu_ms(engine, tensor, reps)}
    decode = cpu_ms(decode_fn, reps)

    def back() -> Any:
        return back_fn(small, info)
    image = None
    if "overlay" in kinds:  # what an overlay request decodes besides the model's input
        from service.core.decode import decode_image

        image = decode_image(data, 10**9)
    for kind in kinds:
        stages = {"decode": decode, "resize": cpu_ms(back, reps)}

        def render(kind: str = kind) -> Any:  # a fresh map each time: nothing cached between calls
            return render_output(kind, image, back(), engine.metadata, header)[0]
        stages["render"] = cpu_ms(render, reps) - stages["resize"]
        body = render()
        if isinstance(body, dict):
            stages["serialize"] = cpu_ms(lambda body=body: serialize(body), reps)
        result[kind] = stages
    return result


if __name__ == "__main__":
    model_path, upload, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kinds = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else KINDS
    as_the_server_runs()
    with open(upload, "rb") as f:
        print(json.dumps(measure(model_path, f.read(), n, kinds)))
