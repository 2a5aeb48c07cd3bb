"""Warm-up of a starting server: the model (every bucket), the output kinds, retried while the device fails, and
the wait that keeps a worker from accepting connections until it is warm."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from .core.contract import ContractError
from .startup import warn_if_batch_outlasts_timeout
from .state import ServiceState
from .worker_slots import device_warm_up

log = logging.getLogger("service.app")  # the startup lines operators grep for ("cannot start: ...") keep their logger


async def until_warm(state: ServiceState) -> None:
    """Wait for warm-up before uvicorn starts accepting (it does once the lifespan has started), or until uvicorn is
    told to stop. Under the supervisor the workers share the listening socket and the kernel hands each new
    connection to any worker accepting: a worker warming up took its share and answered each 503 `not_ready`
    (seconds to a minute on a GPU with many buckets) while its siblings had room. A single process keeps accepting
    during warm-up instead, so that its probes see `/healthz` alive and `/readyz` say why it is not ready yet.
    uvicorn's SIGTERM/SIGINT handler is its server's bound `handle_exit`, installed before the lifespan starts."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    while not state.warm and not getattr(server, "should_exit", False):
        if state.warmup_task is not None and state.warmup_task.done():
            state.warmup_task.result()  # it ended unwarmed: the model's refusal, raised from the lifespan
        await asyncio.sleep(0.05)


async def warm_up(state: ServiceState, serving: bool) -> None:
    """Warm up; a failure is retried every SEGMENT_INFERENCE_PROBE_S (a device can fail for a while at startup,
    e.g. out of memory while another process frees its share) and counts as a failed probe, so a warm-up that keeps
    failing makes the process unhealthy, to be replaced, rather than unready for ever. A model off the contract
    (its labels' shape) is not retried: raised to the lifespan waiting (`until_warm`), else logged, and the
    server `serving` stopped (`stop_refused`)."""
    assert state.engine is not None and state.batcher is not None
    guard = state.batcher.guard
    while True:
        try:
            await warm_up_once(state)
        except ContractError as exc:
            if not serving:
                raise
            log.error("cannot start: %s", exc)
            stop_refused(getattr(signal.getsignal(signal.SIGTERM), "__self__", None))
            return
        except Exception as exc:
            if state.warmup_error is None:
                log.exception("warm-up failed; /readyz stays 503 while it is retried every %gs",
                              guard.health.probe_interval_s)
            state.warmup_error = f"{type(exc).__name__}: {exc}"
            guard.known_good_failed(state.warmup_error, recover=False)  # retrying warm-up is the probe here
            await asyncio.sleep(guard.health.probe_interval_s)
            continue
        if state.warmup_error:
            log.warning("warm-up succeeded after failing (%s): ready", state.warmup_error)
        state.warmup_error = None
        guard.known_good_worked()
        state.warm = True
        state.loop_lag.start()  # from readiness on: start-up's model loading is not the serving loop's lag
        return


def stop_refused(server: object) -> None:
    """Stop `server` (uvicorn's, found through its SIGTERM handler) drained as on SIGTERM, for a model refused after
    the port opened. `segment-serve`'s own server is told it was a refusal, so that the process exits 3 as every
    other startup refusal does: uvicorn's handler would raise SIGTERM once drained (exit 143, which process
    managers count as a clean stop, so a broken model would pass for one stopped on purpose)."""
    if server is None:  # not uvicorn's handler: a server in a test's thread
        return
    if callable(refuse := getattr(server, "refuse_model", None)):
        refuse()
    else:  # a plain uvicorn server (embedding, tests): its own handler; not a real signal to the process
        server.handle_exit(signal.SIGTERM, None)  # type: ignore[attr-defined]


async def warm_up_once(state: ServiceState) -> None:
    assert state.engine is not None and state.batcher is not None
    batch = state.settings.max_batch_size
    engine = state.engine
    sizes = (1, batch) if engine.on_gpu and batch > 1 else (1,)
    batcher = state.batcher
    health = batcher.guard.health

    def warm_engine() -> None:
        with device_warm_up(engine.device_id) if engine.on_gpu else contextlib.nullcontext():
            # Each of its runs is in flight as a batch's is: a device that hangs in warm-up makes the process
            # unhealthy, to be replaced, instead of unready for ever; a warm-up long in all (many buckets) does not.
            warm_up_s = engine.warm_up(sizes, each_run=health.running, on_each_thread=batcher.on_each_thread)
            warn_if_batch_outlasts_timeout(engine, state.settings, each_run=health.running, warm_up_s=warm_up_s)

    await asyncio.to_thread(warm_engine)
    if state.codec is not None:
        state.outputs_warmup_s = await asyncio.to_thread(state.codec.pipeline.warm_outputs)
    if state.engine.runner is not None:
        for bucket in state.engine.runner.buckets:
            if bucket.memory_bytes is not None:
                state.metrics.bucket_memory.labels(bucket=str(bucket.size)).set(bucket.memory_bytes)
    # Everything loaded so far (modules, sessions, settings) lives as long as the process: move it out of the
    # collector's reach, so a full collection no longer walks it while requests wait for the interpreter
    # lock (measured in the server process: a full collection 19 ms before, under 0.1 ms after).
    gc.collect()
    gc.freeze()
