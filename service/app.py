"""The FastAPI application: routes, error envelope, lifespan (load → warm up → serve → drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, outputs
from .admission import Admission, Slots, UploadBudget, declared_length, low_priority_pool
from .batcher import Batcher
from .codec import Codec
from .connection import BodyDeadlineMiddleware
from .decode_budget import DECODE_BUDGET
from .engine import Engine, load_engine
from .errors import ApiError
from .imaging import decode_image
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware, error_response
from .results_cache import ResultsCache, new_result_id
from .settings import Settings

log = logging.getLogger(__name__)

OutputKind = Literal["labels", "color", "overlay", "polygons", "stats"]
# Reachable without an API key: probes, scraping, the docs and the static web page.
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
# Accept-header negotiation when `output` is not given: first match by quality wins.
_ACCEPT_TO_OUTPUT = {"image/png": "labels", "image/jpeg": "overlay", "application/geo+json": "polygons",
                     "application/json": "stats"}


@dataclass
class ServiceState:
    """What the routes share: settings, the engine and batcher once loaded, metrics, the result cache."""

    settings: Settings
    metrics: Metrics
    cache: ResultsCache
    pool: ThreadPoolExecutor
    uploads: UploadBudget  # bodies still arriving, before admission
    renders: Slots  # /results re-renders, in their own pool so they never queue ahead of /segment's work
    render_pool: ThreadPoolExecutor
    engine: Engine | None = None
    batcher: Batcher | None = None
    codec: Codec | None = None  # decode and encode, in `pool` or in worker processes
    warm: bool = False
    warmup_error: str | None = None
    warmup_task: asyncio.Task[None] | None = field(default=None, repr=False)
    admitted: int = 0  # /segment requests between admission and answer (decoding, queued, running, encoding)

    @property
    def max_admitted(self) -> int:
        """Admission bound: the inference queue, as much again waiting to be decoded, and one running batch.
        Without it the excess of an overload piles up in front of the decoder, unbounded, and is only refused
        after paying for its decode (measured: accepted p50 12 s, p99 58 s at 4x capacity)."""
        return 2 * self.settings.max_queue + self.settings.max_batch_size

    def readiness(self) -> tuple[bool, str]:
        if self.engine is None:
            return False, "loading"
        if self.warmup_error:
            return False, "warmup_failed"
        if not self.warm:
            return False, "warming_up"
        if self.batcher is None or not self.batcher.running:
            return False, "shutting_down"
        if self.batcher.full or self.admitted >= self.max_admitted:
            return False, "overloaded"
        return True, "ok"


def _state(request: Request) -> ServiceState:
    return request.app.state.service


async def _admit(request: Request) -> AsyncIterator[Admission]:
    """A /segment request's admission (service/admission.py): an upload reservation while its body arrives,
    then `admit()` counts it among those in progress, or refuses it with 503 + Retry-After before decoding."""
    state = _state(request)
    with Admission(state, state.uploads, declared_length(request.headers, state.settings.max_upload_bytes)) as ticket:
        yield ticket


def _codec(state: ServiceState) -> Codec:
    if state.codec is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
    return state.codec


def _engine(state: ServiceState) -> tuple[Engine, Batcher]:
    if state.engine is None or state.batcher is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
    return state.engine, state.batcher


def _negotiate(accept: str | None) -> str:
    """The output kind for an Accept header (labels when nothing specific is asked for)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media.lower() in _ACCEPT_TO_OUTPUT and q > 0:
            ranked.append((-q, index, _ACCEPT_TO_OUTPUT[media.lower()]))
    return min(ranked)[2] if ranked else "labels"


async def _read_upload(request: Request, settings: Settings) -> bytes:
    """The image bytes: multipart field `image`, or the raw body for any other content type."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=4, max_fields=32, max_part_size=settings.max_upload_bytes)
        try:
            field_value = form.get("image")
            if field_value is None:
                raise ApiError(422, "invalid_request", "multipart body has no field named 'image'")
            if isinstance(field_value, UploadFile):
                return await field_value.read()
            return field_value.encode("latin-1", errors="replace")  # a text field: let decode judge it
        finally:
            await form.close()
    # Any other type (image/*, application/octet-stream, curl --data-binary's form-urlencoded default) is the
    # image itself; decode_image sniffs the real format from the bytes.
    return await request.body()


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the service. The model loads in the lifespan (or `engine` is used as given)."""
    settings = settings or Settings()
    DECODE_BUDGET.set_capacity(settings.decode_memory_bytes)  # process-wide: decodes share the pod's memory
    metrics = Metrics(settings.max_batch_size)
    state = ServiceState(
        settings=settings, metrics=metrics,
        cache=ResultsCache(settings.result_ttl_s, settings.result_cache_bytes),
        pool=ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="codec"),
        uploads=UploadBudget(settings.upload_buffer_bytes),
        renders=Slots(settings.max_result_renders, "result renders"),
        render_pool=low_priority_pool(settings.max_result_renders, "render"),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        try:
            state.engine = engine or await loop.run_in_executor(None, load_engine, settings)
        except Exception as exc:
            log.error("cannot start: %s", exc)
            raise
        eng = state.engine
        metrics.set_model(provider=eng.provider, precision=eng.precision, arch=eng.metadata.arch,
                          model=eng.name)
        state.batcher = Batcher(eng.run_images, max_batch_size=settings.max_batch_size,
                                max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, metrics=metrics,
                                concurrency=settings.concurrent_batches or (2 if eng.on_gpu else 1),
                                padded_size=eng.padded_size)
        state.batcher.start()
        state.codec = Codec(eng, state.pool, max_pixels=settings.max_pixels, processes=settings.codec_processes,
                            decode_memory_bytes=settings.decode_memory_bytes)
        state.warmup_task = loop.create_task(_warm_up(state))
        try:
            yield
        finally:
            # uvicorn has stopped accepting and finished open requests; now drain anything left queued.
            if state.warmup_task is not None:
                state.warmup_task.cancel()
            await state.batcher.stop(drain_timeout_s=settings.request_timeout_s)
            state.codec.shutdown()
            state.pool.shutdown(wait=False, cancel_futures=True)
            state.render_pool.shutdown(wait=False, cancel_futures=True)
            log.info("drained and stopped")

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN, so
    # they work offline. Their files live under the public /static/ prefix (mounted before /static itself).
    app = FastAPIOffline(
        static_url="/static/docs", title="Segmentation service", version=__version__, lifespan=lifespan,
        description="Semantic segmentation (DeepLab ResNet-ASPP on onnxruntime) with dynamic batching. "
                    "Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code.",
    )
    app.state.service = state

    # Middleware: the last added is the outermost. Request context wraps everything, so every response
    # (401, 413 and crashes included) gets an X-Request-ID and is counted.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyDeadlineMiddleware, timeout_s=settings.body_timeout_s, min_rate=settings.body_min_rate)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, public_paths=PUBLIC_PATHS,
                       public_prefixes=PUBLIC_PREFIXES)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "X-Result-ID", "Retry-After"],
                           max_age=600)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    _install_error_handlers(app, metrics)
    _install_routes(app)
    _install_web_page(app)
    return app


# -- the web page: plain files in service/static, no build step -------------------------------------
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _install_web_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _warm_up(state: ServiceState) -> None:
    assert state.engine is not None
    batch = state.settings.max_batch_size
    sizes = (1, batch) if state.engine.on_gpu and batch > 1 else (1,)
    try:
        await asyncio.to_thread(state.engine.warm_up, sizes)
        if state.codec is not None:
            await asyncio.to_thread(state.codec.warm_up)
        if state.engine.runner is not None:
            for bucket in state.engine.runner.buckets:
                if bucket.memory_bytes is not None:
                    state.metrics.bucket_memory.labels(bucket=str(bucket.size)).set(bucket.memory_bytes)
        state.warm = True
    except Exception as exc:
        state.warmup_error = f"{type(exc).__name__}: {exc}"
        log.exception("warm-up failed; /readyz stays 503")


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("request %s: %s %s", request.state.request_id, exc.code, exc.message)
        metrics.rejected.labels(reason=exc.code).inc()
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


_SEGMENT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {"description": "The segmentation, as asked for by `output` (or the Accept header)",
                "content": {"image/png": {}, "image/jpeg": {}, "application/json": {}, "application/geo+json": {}}},
        "400": {"description": "empty body or corrupt image"},
        "408": {"description": "the body stopped arriving (body deadline)"},
        "413": {"description": "upload or image too large"},
        "415": {"description": "not a supported image"},
        "422": {"description": "invalid parameters or missing field `image`"},
        "503": {"description": "overloaded (see Retry-After)"},
        "504": {"description": "inference timed out"},
    },
}


def _install_routes(app: FastAPI) -> None:
    @app.post("/segment", summary="Segment an image", openapi_extra=_SEGMENT_BODY_DOC)
    async def segment(
        request: Request,
        output: OutputKind | None = Query(None, description="labels | color | overlay | polygons | stats; "
                                                            "default from Accept, else labels"),
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="overlay opacity of the class colours"),
        format: Literal["png", "jpeg"] = Query("jpeg", description="overlay image format"),
        tolerance: float = Query(1.0, ge=0.0, description="polygon simplification tolerance, pixels"),
        min_area: float | None = Query(None, ge=0.0, description="drop polygons smaller than this, pixels²; "
                                                                 "default 0.01% of the image"),
        admission: Admission = Depends(_admit),
    ) -> Response:
        state = _state(request)
        settings, metrics = state.settings, state.metrics
        engine, batcher = _engine(state)
        request_id = request.state.request_id
        kind = output or _negotiate(request.headers.get("accept"))
        timing: dict[str, float] = {}

        data = await _read_upload(request, settings)  # under the body deadline (service/connection.py)
        if not data:
            raise ApiError(400, "empty_body", "the request carried no image bytes")
        admission.admit()

        t0 = time.perf_counter()
        codec = _codec(state)
        with batcher.expecting():  # a batch being formed now waits for this image
            image, tensor, info = await codec.decode(data, full_resolution=kind == "overlay")
        timing["decode"] = time.perf_counter() - t0

        result = await batcher.infer(tensor, settings.request_timeout_s, request_id)
        timing["queue"], timing["inference"] = result.queue_s, result.inference_s

        t0 = time.perf_counter()
        result_id = new_result_id()
        body, media, label_map = await codec.encode(
            kind, image, result.labels, info, {"id": result_id, "model": engine.name}, alpha=alpha, fmt=format,
            tolerance=tolerance, min_area=min_area)
        state.cache.put(result_id, label_map, data)
        timing["encode"] = time.perf_counter() - t0
        for stage, seconds in timing.items():
            metrics.stage_duration.labels(stage=stage).observe(seconds)

        headers = {"X-Result-ID": result_id, "X-Batch-Size": str(result.batch_size),
                   "Server-Timing": ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timing.items())}
        if isinstance(body, dict):
            body = {**body, "timing_ms": {k: round(v * 1000, 3) for k, v in timing.items()}}
            return JSONResponse(body, headers=headers, media_type=media)
        return Response(body, media_type=media, headers=headers)

    @app.get("/results/{result_id}/{name}", summary="Fetch a recent result again",
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown or expired id"},
                        503: {"description": "too many re-renders in progress (see Retry-After)"}})
    async def result(request: Request, result_id: str,
                     name: Literal["labels.png", "color.png", "overlay.png"]) -> Response:
        state = _state(request)
        engine, _ = _engine(state)
        stored = state.cache.get(result_id)
        if stored is None:
            raise ApiError(404, "result_not_found", f"no result {result_id!r} (unknown or expired)")
        kind = name.removesuffix(".png")

        def encode() -> bytes:
            # The upload was accepted once, so it decodes again; only an overlay needs its pixels.
            image = decode_image(stored.source, state.settings.max_pixels) if kind == "overlay" else None
            body, _ = outputs.render_output(kind, image, stored.labels, engine.metadata, fmt="png")
            return body  # type: ignore[return-value]  # image kinds are always bytes

        with state.renders:  # bounded and in its own pool: refetches cannot starve /segment
            data = await asyncio.get_running_loop().run_in_executor(state.render_pool, encode)
        return Response(data, media_type="image/png", headers={"X-Result-ID": result_id})

    @app.get("/classes", summary="Class names and colours from the model metadata")
    async def classes(request: Request) -> dict[str, Any]:
        engine, _ = _engine(_state(request))
        meta = engine.metadata
        return {
            "model": engine.name, "arch": meta.arch, "precision": engine.precision,
            "input_size": meta.input_size, "ignore_index": meta.ignore_index, "source": meta.source,
            "classes": [{"id": i, "name": name, "color": list(meta.palette[i])}
                        for i, name in enumerate(meta.classes)],
        }

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded, warmed up, queue below its limit",
             responses={503: {"description": "not ready: loading, warming up, overloaded or shutting down"}})
    async def readyz(request: Request) -> JSONResponse:
        state = _state(request)
        ready, status = state.readiness()
        body: dict[str, Any] = {"ready": ready, "status": status}
        if state.engine is not None:
            eng = state.engine
            body.update(provider=eng.provider, requested_providers=eng.requested_providers,
                        precision=eng.precision, arch=eng.metadata.arch, model=eng.name,
                        input_size=eng.input_size, intra_op_threads=eng.intra_op_threads,
                        max_batch_size=state.settings.max_batch_size, fixed_shapes=eng.runner is not None)
            if eng.runner is not None:
                body.update(eng.runner.describe())
        if state.warmup_error:
            body["error"] = state.warmup_error
        if state.batcher is not None:
            body.update(queue_depth=state.batcher.depth, max_queue=state.batcher.max_queue,
                        concurrent_batches=state.batcher.concurrency)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True, response_class=PlainTextResponse)
    async def metrics_route(request: Request) -> Response:
        state = _state(request)
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
