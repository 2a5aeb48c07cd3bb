"""Loading the engine for the service: the core's options from the settings, errors named by variable; and, once
warm-up has timed the model, a warning when the largest batch cannot finish within the request timeout."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from .core.buckets import fill_bucket
from .core.engine import Engine, EngineError, load_engine
from .core.letterbox import pad_canvas
from .settings import Settings

log = logging.getLogger(__name__)


def open_engine(settings: Settings) -> Engine:
    """`load_engine` with these settings; an `EngineError` names the `SEGMENT_*` variable at fault."""
    try:
        return load_engine(settings.engine_options())
    except EngineError as exc:
        if exc.setting is None:
            raise
        raise EngineError(f"SEGMENT_{exc.setting.upper()}: {exc}", exc.setting) from None


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
