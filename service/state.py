"""What the routes share (`ServiceState`), and the FastAPI dependencies that hand it out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Depends, Request

from .admission import Admission, Slots, UploadBudget, declared_length
from .batcher import Batcher
from .codec import Codec
from .core.engine import Engine
from .core.handoff import WorkerThreads
from .core.priorities import bulk_places
from .errors import ApiError
from .loop_lag import LoopLagMonitor
from .metrics import Metrics
from .request_memory import RequestMemory
from .results_cache import ResultStore
from .settings import Settings


@dataclass
class ServiceState:
    """What the routes share: settings, the engine and batcher once loaded, metrics, the result cache."""

    settings: Settings
    metrics: Metrics
    cache: ResultStore
    pool: WorkerThreads  # decode and encode (service/core/handoff.py)
    uploads: UploadBudget  # bytes received of bodies still arriving, before admission
    renders: Slots  # /results re-renders, in their own pool so they never queue ahead of /segment's work
    render_pool: WorkerThreads  # at lower CPU priority (service/admission.py)
    heavy_pool: WorkerThreads  # decodes of very large images, at lower CPU priority (service/codec.py)
    loop_lag: LoopLagMonitor  # started once warm (service/loop_lag.py)
    engine: Engine | None = None
    batcher: Batcher | None = None
    codec: Codec | None = None  # decode and encode, in `pool`
    warm: bool = False
    warmup_error: str | None = None
    outputs_warmup_s: float | None = None  # rendering every output kind once before readiness
    warmup_task: asyncio.Task[None] | None = field(default=None, repr=False)
    admitted: int = 0  # /segment requests between admission and answer (decoding, queued, running, encoding)
    on_the_way: int = 0  # admitted, not yet in the inference queue: waiting for or in their decode
    # What admitted requests hold from their decode to their answer (service/request_memory.py).
    memory: RequestMemory = field(init=False)

    def __post_init__(self) -> None:
        self.memory = RequestMemory(self.settings.request_memory_bytes, self.metrics.request_memory,
                                    bulk_share=self.settings.bulk_queue_share)

    @property
    def max_admitted(self) -> int:
        """Admission bound: the inference queue, as much again past it (running, waiting for an encode thread,
        encoding), and one running batch. Without it the excess of an overload piles up in front of the decoder,
        unbounded (measured: accepted p50 12 s, p99 58 s at 4x capacity). Those on their way to the queue are
        bounded by its places besides (`queue_places`)."""
        return 2 * self.settings.max_queue + self.settings.max_batch_size

    @property
    def kept_for_interactive(self) -> int:
        """The queue's places a bulk request may not take (service/admission.py): beyond its share
        (`SEGMENT_BULK_QUEUE_SHARE`, `bulk_places`). As many places in progress are kept too."""
        max_queue = self.settings.max_queue
        return max_queue - bulk_places(max_queue, self.settings.bulk_queue_share)

    def max_tiles(self, bulk: bool = False) -> int:
        """The most tiles one request may run in (`SEGMENT_MAX_TILES`): each is a place in the queue, so never more
        than a bulk request's share of it; an interactive request no more than the places kept for interactive
        requests, which a bulk flood leaves free (so it cannot refuse one), and never fewer than a bulk request
        (with a bulk share above half, more than those kept; with none kept, the whole queue)."""
        kept = self.kept_for_interactive
        bulk_places = self.settings.max_queue - kept
        return min(self.settings.max_tiles, bulk_places if bulk else max(kept, bulk_places))

    @property
    def bulk_max_admitted(self) -> int:
        """The requests in progress (of any priority) below which a bulk one is admitted."""
        return self.max_admitted - self.kept_for_interactive

    def queue_places(self, bulk: bool = False) -> int:
        """Places for requests on their way to the inference queue: its free places (every image waiting for a
        batch takes one, a forming batch's too), and one for each inference slot running no batch, whose worker
        takes an image off the queue as soon as it comes. Admission keeps those on their way within them
        (service/admission.py), so that none finds the queue full after its decode. For a `bulk` request, those
        `kept_for_interactive` are not free."""
        kept = self.kept_for_interactive if bulk else 0
        if self.batcher is None:
            return self.settings.max_queue - kept
        batcher = self.batcher
        return batcher.max_queue - batcher.depth + batcher.concurrency - batcher.in_flight - kept

    def serving(self) -> tuple[Engine, Batcher, Codec]:
        """The engine, batcher and codec a /segment request needs, or 503 (with Retry-After) before its body is
        read: `not_ready` while the model loads and warms up, `inference_unavailable` while model runs fail or hang."""
        if self.engine is None or self.batcher is None or self.codec is None:
            raise _not_ready()
        if self.batcher.health.failing:  # refused before its body is read: it could only fail
            raise self.batcher.health.unavailable()
        self.batcher.refuse_if_stalled()  # a hung device: it could not even start in time
        if not self.warm:
            # uvicorn accepts as soon as startup ends, and the workers of one port share its connections, so
            # requests can come before readiness. Until warm-up has built and run every bucket they could reach
            # a session not yet built and be taken for a failing device; a warm-up that failed is one.
            raise self.batcher.health.unavailable() if self.warmup_error else _not_ready()
        return self.engine, self.batcher, self.codec

    def admission(self, request: Request, bulk: bool = False) -> Admission:
        """A /segment request's admission (service/admission.py): an upload reservation that grows as its body
        arrives, then `admit()` counts it among those in progress, or refuses it with 503 + Retry-After before
        decoding."""
        return Admission(self, self.uploads, declared_length(request.headers), bulk)

    def readiness(self, overload_ready: bool = False) -> tuple[bool, str]:
        """Whether to send this server new requests, and its state: `ok`, or why not (`loading`, `warmup_failed`,
        `warming_up`, `shutting_down`, `inference_failing`, `overloaded`).

        `overload_ready`: a momentary overload (queue or budgets full) counts as ready, still said `overloaded`.
        An orchestrator that takes unready replicas out of its load balancer (a Kubernetes Service) would
        otherwise have none left when every one is saturated at once, and clients would get connection errors
        instead of the 503 + Retry-After that overload answers. A hung device (every inference slot holds a run
        older than the request timeout) is no overload, and is then told apart: `inference_stalled`, not ready."""
        if self.engine is None:
            return False, "loading"
        if self.warmup_error:
            return False, "warmup_failed"
        if not self.warm:
            return False, "warming_up"
        if self.batcher is None or not self.batcher.running:
            return False, "shutting_down"
        if self.batcher.health.failing:
            return False, "inference_failing"
        if overload_ready and self.batcher.stalled:
            return False, "inference_stalled"
        if (self.batcher.full or self.admitted >= self.max_admitted or self.on_the_way >= self.queue_places()
                or self.memory.spent):
            return overload_ready, "overloaded"
        return True, "ok"


# The dependencies of the other routes. `async def` although none awaits: FastAPI runs a plain `def` dependency
# in a worker thread (anyio), a hand-off to a thread and back for each (~50 µs CPU; as plain functions, /segment's
# four cost 0.7 of the event loop's ~3 CPU-ms per request). /segment takes none (see routes/segment.py).


async def service_state(request: Request) -> ServiceState:
    """Dependency: the app's shared state."""
    return request.app.state.service


def _not_ready() -> ApiError:
    return ApiError(503, "not_ready", "the model is still loading or warming up", {"Retry-After": "1"})


async def loaded_engine(state: ServiceState = Depends(service_state)) -> Engine:
    """Dependency: the engine, or 503 `not_ready` while it loads."""
    if state.engine is None:
        raise _not_ready()
    return state.engine

