"""Operations: `/classes`, `/outputs`, `/healthz`, `/readyz` and `/metrics`."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..core.engine import Engine
from ..core.output_kinds import describe as describe_outputs
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import Metrics
from ..metrics_files import metrics_files_lock
from ..openapi_contract import HEALTH_RESPONSES, NOT_READY, READY_RESPONSES
from ..state import ServiceState, loaded_engine, service_state
from ..worker_census import read_census
from ..worker_slots import supervisor_dir

router = APIRouter()


@router.get("/classes", summary="Class names and colours from the model metadata", responses={503: NOT_READY})
async def classes(engine: Engine = Depends(loaded_engine)) -> dict[str, Any]:
    meta = engine.metadata
    return {
        **engine.description(), "ignore_index": meta.ignore_index,
        "classes": [{"id": i, "name": name, "color": list(meta.palette[i])}
                    for i, name in enumerate(meta.classes)],
    }


@router.get("/outputs", summary="The output kinds `POST /segment` answers with: media types, file suffixes, "
                                 "the Accept types that choose them")
async def output_kinds() -> dict[str, Any]:
    return {"outputs": describe_outputs()}


@router.get("/healthz", summary="Liveness: the process answers, and model runs have neither failed nor hung for "
                                 "SEGMENT_INFERENCE_UNHEALTHY_AFTER_S",
            responses=HEALTH_RESPONSES)
async def healthz(state: ServiceState = Depends(service_state)) -> JSONResponse:
    health = state.batcher.health if state.batcher is not None else None
    if health is None or health.unhealthy is None:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": health.unhealthy, "inference": health.describe()}, status_code=503)


@router.get("/readyz", summary="Readiness: model loaded, warmed up, queue below its limit",
            responses=READY_RESPONSES)
async def readyz(state: ServiceState = Depends(service_state),
                 overload: Literal["unready", "ready"] = Query(
                     "unready", description="`ready`: a momentary overload (queue or memory budgets full) answers "
                                            "200 with `ready: true`, `status: overloaded`, for an orchestrator's "
                                            "readiness probe (a Kubernetes Service with every replica saturated "
                                            "would have no endpoints left, and clients no 503 + Retry-After); "
                                            "every other reason stays 503")) -> JSONResponse:
    ready, status = state.readiness(overload_ready=overload == "ready")
    body: dict[str, Any] = {"ready": ready, "status": status, "pid": os.getpid()}
    if state.settings.worker_slot is not None:
        body["worker_slot"] = state.settings.worker_slot
    if (census := read_census(supervisor_dir())) is not None:  # the whole server's workers, as the supervisor sees them
        body["workers"] = census.describe()
    body["codec_threads"] = state.pool.workers
    if state.engine is not None:
        eng = state.engine
        body.update(provider=eng.provider, requested_providers=eng.requested_providers,
                    precision=eng.precision, arch=eng.metadata.arch, model=eng.name, model_sha256=eng.sha256,
                    input_size=eng.input_size, intra_op_threads=eng.intra_op_threads,
                    max_batch_size=state.settings.max_batch_size, fixed_shapes=eng.runner is not None,
                    max_tiles=state.max_tiles())
        if eng.on_gpu:
            body["cuda_device"] = eng.device_id
        if eng.runner is not None:
            body.update(eng.runner.describe())
            if state.batcher is not None:  # the requests' runs: the engine's own count has the guard's probes too
                body["padding_fraction"] = state.batcher.padding_fraction
    if state.outputs_warmup_s is not None:
        body["outputs_warmup_ms"] = round(state.outputs_warmup_s * 1000, 1)
    if state.warmup_error:
        body["error"] = state.warmup_error
    if state.batcher is not None:
        body.update(queue_depth=state.batcher.depth, max_queue=state.batcher.max_queue,
                    concurrent_batches=state.batcher.concurrency,
                    fill_while_busy=state.batcher.fills_while_busy, inference=state.batcher.health.describe())
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True, response_class=PlainTextResponse)
async def metrics_route(state: ServiceState = Depends(service_state)) -> Response:
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.depth)
    # Rendered off the event loop: under several workers it reads every worker's files (and the GPU's gauges ask
    # NVML), which on the loop held up every request and /healthz meanwhile. In asyncio's default threads, not the
    # codec's (a scrape must not queue behind decodes) nor the low-priority ones (nor behind /results re-renders,
    # and not at nice +10: a scrape is wanted most when the CPUs are saturated).
    return Response(await asyncio.to_thread(_render, state.metrics), media_type=METRICS_CONTENT_TYPE)


def _render(metrics: Metrics) -> bytes:
    # The lock keeps the supervisor from folding a dead worker's files into the archive while they are read.
    with metrics_files_lock(os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
        return metrics.render()
