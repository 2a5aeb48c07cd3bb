"""The FastAPI application: middleware, error envelope, routers, lifespan (load → warm up → serve → drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import cv2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .admission import Slots, UploadBudget, low_priority_pool
from .api_docs import document_api_keys
from .batcher import Batcher
from .body_limits import BodyLimitMiddleware
from .codec import Codec
from .connection import BodyDeadlineMiddleware
from .core.contract import ContractError
from .core.crf import CrfPool
from .core.decode_budget import DECODE_BUDGET
from .core.engine import Engine, EngineError
from .core.handoff import WorkerThreads
from .core.letterbox import pad_canvas
from .core.pipeline import Pipeline
from .errors import ApiError
from .gpu_metrics import register_gpu_metrics
from .head_routing import HeadAsGetMiddleware
from .inference_guard import InferenceHealth
from .loop_lag import LoopLagMonitor
from .metrics import Metrics
from .middleware import (
    ApiKeyMiddleware,
    RequestContextMiddleware,
    error_response,
)
from .openapi_contract import describe_contract
from .refusal_log import RefusalLog
from .results_cache import ResultsCache, ResultStore
from .results_shared import SharedResultsCache, slot_folder
from .routes import ops, results, segment
from .routes.web import install_web_page
from .security_headers import SecurityHeadersMiddleware
from .settings import Settings
from .startup import open_engine
from .state import ServiceState
from .warm_up import until_warm, warm_up
from .watchdog import stop_when_unhealthy

log = logging.getLogger(__name__)

# Reachable without an API key: probes, scraping, the docs (OpenAPI and the output kinds, which say nothing the
# schema does not) and the static web page (which builds its download list before a key is entered).
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/outputs", "/docs", "/docs/oauth2-redirect", "/redoc",
                "/openapi.json", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")  # documented routes that are not the API (alerts leave them out)


def results_cache(settings: Settings) -> ResultStore:
    """In this process's memory, or (several workers) in files every worker reads, each worker its share."""
    if settings.results_dir is None:
        return ResultsCache(settings.result_ttl_s, settings.result_cache_bytes)
    # A worker's folder is its slot's: its replacement takes the slot, and adopts the results stored there.
    owner = None if settings.worker_slot is None else slot_folder(settings.worker_slot)
    return SharedResultsCache(settings.results_dir, settings.result_ttl_s,
                              settings.result_cache_bytes // settings.worker_total(), owner=owner)


def check_request_memory(settings: Settings, input_size: int) -> None:
    """EngineError when the request memory budget cannot hold one request's model input (`input_size`² × 3
    bytes), the least any request keeps from its decode to its answer: every request would be refused 413."""
    least = 3 * input_size * input_size
    if settings.request_memory_bytes < least:
        raise EngineError(f"SEGMENT_REQUEST_MEMORY_BYTES ({settings.request_memory_bytes} bytes) cannot hold one "
                         f"request's model input ({least} bytes at the model's {input_size}x{input_size}): every "
                         "request would be refused; give it at least a few times that", "request_memory_bytes")


def create_app(settings: Settings | None = None, engine: Engine | None = None, *,
               warm_before_serving: bool = False) -> FastAPI:
    """Build the service. The model loads in the lifespan (or `engine` is used as given). `warm_before_serving`:
    the lifespan's startup waits for warm-up, so the server takes no connection before (`until_warm`)."""
    settings = settings or Settings()
    DECODE_BUDGET.set_capacity(settings.decode_memory_bytes)  # process-wide: decodes share the pod's memory
    cv2.setNumThreads(settings.opencv_threads)  # process-wide too (service/settings.py says why 1)
    metrics = Metrics(settings.max_batch_size, settings.worker_slot)
    codec_threads = settings.codec_threads()  # reads the CPU affinity and cgroup quota: once
    state = ServiceState(
        settings=settings, metrics=metrics,
        cache=results_cache(settings),
        pool=WorkerThreads(codec_threads, "codec"),
        uploads=UploadBudget(settings.upload_buffer_bytes, settings.bulk_queue_share),
        renders=Slots(settings.max_result_renders, "result renders"),
        render_pool=low_priority_pool(settings.max_result_renders, "render"),
        heavy_pool=low_priority_pool(codec_threads, "heavy-decode"),
        loop_lag=LoopLagMonitor(metrics.loop_lag),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as started:
            try:
                await start(started)
            except Exception as exc:  # one line, whatever failed (quiet_startup_failure drops the traceback)
                worded = isinstance(exc, (ContractError, EngineError))  # refusals worded for the user; else its type
                log.error("cannot start: %s", exc if worded else f"{type(exc).__name__}: {exc}")
                raise
            yield

    async def start(started: contextlib.AsyncExitStack) -> None:
        """Load, check and start everything; what `started` is given stops it all, at shutdown or on a failure."""
        loop = asyncio.get_running_loop()
        state.engine = engine or await loop.run_in_executor(None, open_engine, settings)
        check_request_memory(settings, state.engine.input_size)
        eng = state.engine
        metrics.set_model(provider=eng.provider, precision=eng.precision, arch=eng.metadata.arch,
                          model=eng.name, sha256=eng.sha256)
        if eng.on_gpu:
            # Any worker may answer a scrape for all of them, so each reads every device the workers run on.
            devices = ([eng.device_id] if settings.worker_slot is None
                       else settings.cuda_devices_in_use(settings.worker_total()))
            if not register_gpu_metrics(metrics, devices):
                log.info("GPU metrics off for devices NVML (nvidia-ml-py) cannot read")
        fill = settings.fill_while_busy and eng.runner is not None  # only buckets have timings
        if eng.runner is None:
            ignored = [f"SEGMENT_{name.upper()}" for name in ("fill_while_busy", "batch_buckets")
                       if name in settings.model_fields_set]
            if ignored:
                log.warning("%s need fixed shapes (SEGMENT_FIXED_SHAPES=on; auto is off on CPU): ignored",
                            " and ".join(ignored))
        state.batcher = Batcher(eng.run_images, max_batch_size=settings.max_batch_size,
                                max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, metrics=metrics,
                                concurrency=settings.concurrent_batches or eng.concurrent_batches,
                                padded_size=eng.padded_size, take=eng.batch_take,
                                expected_s=eng.expected_batch_s if fill else None,
                                health=InferenceHealth(settings.inference_failures_to_unready,
                                                       settings.inference_probe_s,
                                                       settings.inference_unhealthy_after_s),
                                # What warm-up runs: known to work on a working device.
                                probe_image=pad_canvas(eng.input_size, eng.input_size, eng.metadata.pad_rgb))
        state.batcher.start()
        pipeline = Pipeline(eng, max_pixels=settings.max_pixels, batch_size=settings.max_batch_size)
        # No process until the first crf=true request.
        crf_pool = CrfPool(settings.crf_pool_processes(), bulk_share=settings.bulk_queue_share)
        state.codec = Codec(pipeline, state.pool, heavy_threads=state.heavy_pool, crf=crf_pool)
        watchdog = None
        if settings.exit_when_unhealthy:  # bounded by uvicorn's graceful shutdown, then the batcher's drain
            watchdog = loop.create_task(stop_when_unhealthy(state.batcher.health,
                                                            settings.shutdown_timeout_s + settings.request_timeout_s,
                                                            warming=lambda: not state.warm))
        started.push_async_callback(stop, watchdog, crf_pool)
        # Labels of the wrong shape, or a batch dimension that fails above 1 image, refuse the model now (both
        # ContractErrors); a device failing is left to warm-up's retries.
        try:
            await loop.run_in_executor(None, eng.check_labels, state.batcher.guard.health.running,
                                       settings.max_batch_size)
        except Exception as exc:
            if isinstance(exc, ContractError):
                raise
        state.warmup_task = loop.create_task(warm_up(state, serving=not warm_before_serving))
        if warm_before_serving:
            await until_warm(state)

    async def stop(watchdog: asyncio.Task[None] | None, crf_pool: CrfPool) -> None:
        # uvicorn has stopped accepting and finished open requests; now drain anything left queued.
        for task in (state.warmup_task, watchdog):
            if task is not None:
                task.cancel()
        state.loop_lag.stop()
        assert state.batcher is not None
        await state.batcher.stop(drain_timeout_s=settings.request_timeout_s)
        for pool in (state.pool, state.render_pool, state.heavy_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        crf_pool.close()  # its processes end now: every request has been answered or cut off by here
        log.info("drained and stopped")

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN, so
    # they work offline. Their files live under the public /static/ prefix (mounted before /static itself).
    app = FastAPIOffline(
        static_url="/static/docs", title="Segmentation service", version=__version__, lifespan=lifespan,
        description="Semantic segmentation (DeepLab ResNet-ASPP on onnxruntime) with dynamic batching. "
                    "Errors are `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable code.",
    )
    app.state.service = state

    # Middleware: the last added is the outermost. Request context wraps all but the HEAD routing, so every response
    # (401, 413 and crashes included) gets an X-Request-ID and is counted.
    # No upload may be larger than the buffer for uploads arriving either: it could never be reserved there, so it
    # is refused as too large (413, from its Content-Length or as it grows) rather than told to retry (503).
    app.add_middleware(BodyLimitMiddleware, max_bytes=min(settings.max_upload_bytes, settings.upload_buffer_bytes))
    app.add_middleware(BodyDeadlineMiddleware, timeout_s=settings.body_timeout_s, min_rate=settings.body_min_rate)
    app.add_middleware(ApiKeyMiddleware, keys=settings.accepted_api_keys, bulk_keys=settings.bulk_api_keys,
                       public_paths=PUBLIC_PATHS, public_prefixes=PUBLIC_PREFIXES)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"],
                           expose_headers=["X-Request-ID", "X-Result-ID", "Retry-After", "X-Tiles"], max_age=600)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(HeadAsGetMiddleware)  # outside the rest, so that they all see the GET it is routed as
    # Outermost: nosniff, and the page's and the docs' framing and content policies, on every answer the app sends,
    # the refusals of the middlewares above (401, 413, the crash envelope) included.
    app.add_middleware(SecurityHeadersMiddleware)

    _install_error_handlers(app, metrics)
    for router in (segment.router, results.router, ops.router):
        app.include_router(router)
    install_web_page(app)
    describe_contract(app)  # before the keys: theirs finishes the document this one builds
    if settings.accepted_api_keys:
        document_api_keys(app, PUBLIC_PATHS, PUBLIC_PREFIXES)
    metrics.start_routes(path for path in app.openapi()["paths"] if path not in PROBE_PATHS)  # the documented API
    return app


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    refusals = RefusalLog(log)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        refusals.answered(request.state.request_id, exc)
        metrics.count_rejection(exc.code)
        return error_response(exc, request.scope)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return await api_error(request, ApiError(422, "invalid_request", "; ".join(problems) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        return await api_error(request, ApiError(exc.status_code, code, str(exc.detail),
                                                 dict(exc.headers or {})))
