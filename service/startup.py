"""Loading the engine for the service: the core's options from the settings, errors named by variable; and, once
warm-up has timed the model, a warning when the largest batch cannot finish within the request timeout."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from .core.buckets import fill_bucket
from .core.engine import CUDA, Engine, EngineError, load_engine
from .core.letterbox import pad_canvas
from .settings import Settings

log = logging.getLogger(__name__)


def open_engine(settings: Settings) -> Engine:
    """`load_engine` with these settings; an `EngineError` names the `SEGMENT_*` variable at fault. A model file
    whose metadata `precision` is not the one SEGMENT_PRECISION names is refused (`check_precision`)."""
    try:
        engine = load_engine(settings.engine_options())
        check_precision(engine, settings.precision)
        return engine
    except EngineError as exc:
        if exc.setting is None:
            raise
        raise EngineError(f"SEGMENT_{exc.setting.upper()}: {exc}", exc.setting) from None


def check_precision(engine: Engine, precision: str) -> None:
    """The loaded file's precision (its metadata's, what the exporter wrote) against the setting's.

    An explicit precision picks a variant by its file name (`x.fp16.onnx`), but a file given as that variant is
    taken as it is: fp32 with an fp16 file would serve fp16 without a word. Refused, naming both, rather than
    loading an fp32 sibling instead: the path and the precision were both set on purpose and contradict each
    other, and which one was meant only the operator knows. Checked here, not in the core, where fp32 also means
    "the file as given" (`segment-export evaluate` scores any file that way). With 'auto', an fp16 file given
    directly off CUDA is served, with a warning: fp16 runs far slower than fp32 there (service/core/engine.py)."""
    actual = engine.precision
    path = engine.model_path
    fp32_sibling = path.with_name(path.name.removesuffix(f".{actual}.onnx") + ".onnx")
    hint = (f"; {fp32_sibling} beside it is the fp32 variant"
            if actual != "fp32" and path.name.endswith(f".{actual}.onnx") and fp32_sibling.is_file() else "")
    if precision != "auto" and actual != precision:
        raise EngineError(f"{precision} was asked for, but the model loaded for SEGMENT_MODEL_PATH, {path}, is "
                          f"{actual} (its metadata 'precision'){hint}: point SEGMENT_MODEL_PATH at the {precision} "
                          f"file, or set SEGMENT_PRECISION to {actual} or auto", "precision")
    if precision == "auto" and actual == "fp16" and engine.provider != CUDA:
        log.warning("model %s is fp16 (its metadata 'precision') and runs on %s, where fp16 is far slower than fp32"
                    "%s; give SEGMENT_MODEL_PATH the fp32 file", path, engine.provider, hint)


def largest_batch_s(engine: Engine, max_batch_size: int,
                    each_run: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
                    ) -> tuple[float, str]:
    """Seconds a batch of `max_batch_size` images takes on the warmed-up `engine`, and how that is known. With
    fixed shapes, its bucket's steady-state warm-up run. Without, one run now: of the whole batch on a GPU (warm-up
    ran that size there, so this one is steady-state), of one image times the batch size on CPU (where a batch costs
    its images' time and warm-up runs one image: a whole batch would add its run to every start). `each_run` is
    entered around that run (the guard's in-flight mark: a device hanging here is still reported)."""
    if engine.runner is not None and (measured := engine.expected_batch_s(max_batch_size)) > 0:
        return measured, "measured in warm-up"
    images = max_batch_size if engine.on_gpu else 1
    size = engine.input_size
    batch = fill_bucket([pad_canvas(size, size, engine.metadata.pad_rgb)], images, engine.metadata.pad_rgb)
    with each_run():
        started = time.perf_counter()
        engine.run(batch)
        seconds = time.perf_counter() - started
    if images == max_batch_size:
        return seconds, "measured after warm-up"
    return seconds * max_batch_size, f"{max_batch_size} x one image's {seconds:.3g}s, measured after warm-up"


def warn_if_batch_outlasts_timeout(engine: Engine, settings: Settings,
                                   each_run: Callable[[], contextlib.AbstractContextManager[object]]
                                   = contextlib.nullcontext, warm_up_s: float | None = None) -> str | None:
    """After warm-up: log one WARNING (and return it) when the largest batch takes at least the request timeout,
    else None. Such a batch times its requests out (504) on a healthy device, and once runs that old hold every
    inference slot the server reports itself `stalled` (503 `inference_unavailable`, /readyz `overloaded`) as it
    does for a hung device: the settings are wrong, not the device, and only the log can say so.

    `warm_up_s`: what `Engine.warm_up` took. Without buckets its runs were cold (allocation, planning), so slower
    than steady ones: when even they fit (on CPU one image, times the batch; on a GPU the whole batch was among
    them), a steady batch does too, and no run is added to every start to time one."""
    batch = settings.max_batch_size
    timeout_s = settings.request_timeout_s
    cold_bound = None if warm_up_s is None else warm_up_s if engine.on_gpu else warm_up_s * batch
    if engine.runner is None and cold_bound is not None and cold_bound < timeout_s:
        return None
    seconds, how = largest_batch_s(engine, batch, each_run)
    if seconds < timeout_s:
        return None
    message = (f"a batch of {batch} images takes {seconds:.3g}s ({how}), at or above the request timeout of "
               f"{timeout_s:g}s: full batches will time out (504), and while such runs hold every inference slot "
               f"/segment answers 503 inference_unavailable as for a hung device; raise SEGMENT_REQUEST_TIMEOUT_S "
               f"(now {timeout_s:g}) or lower SEGMENT_MAX_BATCH_SIZE (now {batch})")
    log.warning("%s", message)
    return message
