"""Prometheus metrics, one CollectorRegistry per app so several apps (tests) never collide.

The names are a public interface: deployment dashboards and alerts are written against them. Under several
worker processes (`PROMETHEUS_MULTIPROC_DIR` set, service/workers.py) every worker writes its values to that
directory and `/metrics` sums all of them: gauges are summed over the live workers, the model gauge is the same
in each. What must not be summed carries the worker's slot (`worker`, 0..SEGMENT_WORKERS-1, a bounded label; "0"
for a single process): its start time, which tells a replaced worker, and its event loop's lag, where one stalled
worker among several would be diluted by the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .core.options import DEFAULT_BATCH_SIZE
from .core.priorities import PRIORITIES

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The loop's timers have a 1 ms clock: below 2 ms is on time.
_LAG_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Labelled counters are created at 0 at start for every value known in advance: a series that first appears at 1
# has no earlier sample, so Prometheus' increase() and rate() miss the first event of each kind in each process.
INFERENCE_RUNS = ("batch", "image", "probe")
# The stable error codes (README, "Errors"; tests/service/test_worker_metrics.py keeps the two in step) and
# the two that answer nothing: `client_closed`, a client gone mid-upload, and `send_timeout`, a client that stopped
# reading its answer (service/connection.py). The `http_<status>` codes of unexpected HTTP errors are open-ended.
REJECTION_REASONS = (
    "bad_request", "body_timeout", "bulk_overloaded", "client_closed", "corrupt_image", "crf_unavailable",
    "deadline_exceeded", "empty_body", "header_timeout", "headers_too_large", "image_too_large", "incomplete_multipart",
    "inference_failed", "inference_unavailable", "internal_error", "invalid_request", "method_not_allowed",
    "not_found", "not_ready", "output_too_complex", "overloaded", "payload_too_large", "range_not_satisfiable",
    "result_not_found", "send_timeout", "shutting_down", "timeout", "too_many_tiles", "unauthorized",
    "unsupported_content_encoding", "unsupported_http_version", "unsupported_media_type",
    "unsupported_transfer_encoding", "uri_too_long",
)

_TILE_BUCKETS = (2, 3, 4, 6, 9, 12, 16, 25, 36, 64, 100)

# What an API route answers that the alerts read: successes and the 5xx of failing runs, shedding and timeouts.
# Created at 0 for every API route (`start_routes`); other statuses appear when first answered.
API_STATUSES = (200, 500, 503, 504)


class Metrics:
    """All service metrics, registered on a private registry; `worker_slot` is this worker's slot (None: the only
    process)."""

    def __init__(self, max_batch_size: int = DEFAULT_BATCH_SIZE, worker_slot: int | None = None) -> None:
        self.worker = str(worker_slot or 0)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("segment_requests", "HTTP requests by route template and status code",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram("segment_request_duration_seconds", "HTTP request latency",
                                          ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_duration = Histogram("segment_stage_duration_seconds",
                                        "Per-request time in each stage: decode, queue, inference, encode",
                                        ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self.batch_size = Histogram("segment_batch_size", "Images per inference batch that ran (after a failed "
                                    "batch, each image run again alone is a batch of one)",
                                    buckets=[float(b) for b in batch_buckets], registry=r)
        # By priority: the queue stage above mixes the two, and a bulk backlog's waits would hide whether
        # interactive requests still pass it at once (service/batch_line.py).
        self.queue_wait = Histogram("segment_queue_wait_seconds", "Seconds each /segment image waited in the "
                                    "inference queue, by request priority (interactive or bulk)", ["priority"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self._queue_waits = {priority: self.queue_wait.labels(priority=priority) for priority in PRIORITIES}
        # Requests segmented above the model's input size: how many there are, and how many model inputs each
        # became (`_sum`), the load a `resolution` adds beyond one image a request.
        self.request_tiles = Histogram("segment_request_tiles", "Tiles each /segment request segmented at a "
                                       "resolution above the model's input size ran in", buckets=_TILE_BUCKETS,
                                       registry=r)
        self.queue_depth = Gauge("segment_queue_depth", "Images waiting for the inference worker",
                                 multiprocess_mode="livesum", registry=r)
        self.padding_images = Counter("segment_batch_padding_images",
                                      "Padding rows run to fill fixed-shape batch buckets (compute spent on no "
                                      "image), by batches that ran (a failed run counts in "
                                      "segment_inference_failures_total); divide by segment_batch_size_sum for "
                                      "the waste", registry=r)
        self.held_images = Counter("segment_batch_held_images",
                                   "Images a batch left for the next one, because a smaller full bucket now and "
                                   "the rest later costs less than padding them all, or because they are bulk "
                                   "images that would have lengthened a batch of interactive ones", registry=r)
        self.batches_in_flight = Gauge("segment_batches_in_flight", "Inference batches running now",
                                       multiprocess_mode="livesum", registry=r)
        self.inference_busy = Counter("segment_inference_busy_seconds",
                                      "Seconds the engine spent running batches, summed over batches in flight "
                                      "(Triton's compute duration); its rate over the concurrent-batch count is "
                                      "how busy the inference slots are", registry=r)
        self.bucket_memory = Gauge("segment_bucket_memory_bytes",
                                   "Memory taken by each fixed-shape bucket's session when built and warmed "
                                   "(GPU memory on CUDA, resident memory on CPU)", ["bucket"],
                                   multiprocess_mode="livesum", registry=r)
        self.request_memory = Gauge("segment_request_memory_bytes",
                                    "Memory held by /segment requests from their decode until their answer is sent "
                                    "(SEGMENT_REQUEST_MEMORY_BYTES bounds it in each worker process)",
                                    multiprocess_mode="livesum", registry=r)
        self.inflight = Gauge("segment_inflight_requests", "Segmentation requests being handled",
                             multiprocess_mode="livesum", registry=r)
        self.inference_failures = Counter("segment_inference_failures",
                                          "Failed model runs: a batch, one of its images run alone after it "
                                          "failed, or known-good input (`probe`: the probe image or a warm-up; "
                                          "these mean the device is failing, not the input)", ["run"], registry=r)
        for run in INFERENCE_RUNS:
            self.inference_failures.labels(run=run)
        self.inference_failing = Gauge("segment_inference_failing",
                                       "1 while model runs fail on the device (then /readyz and /segment answer "
                                       "503); summed over worker processes", multiprocess_mode="livesum",
                                       registry=r)
        self.rejected = Counter("segment_rejected", "Requests refused, by error code", ["reason"], registry=r)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason=reason)
        # Only this worker's child is observed: each worker's own loop, not their sum.
        self.loop_lag = Histogram("segment_event_loop_lag_seconds",
                                  "How late each worker's event loop ran a timer due every 100 ms: stalls of the "
                                  "whole process (a blocking call, a long hold of the interpreter lock, a starved "
                                  "CPU), which hold up every request and /healthz alike",
                                  ["worker"], buckets=_LAG_BUCKETS, registry=r).labels(worker=self.worker)
        # The supervisor replaces a worker that dies without a trace elsewhere (`up` stays 1): the slot's start time
        # changes. 'max': until the supervisor removes a dead worker's files (service/metrics_files.py), the newest
        # start, the largest, is the one shown.
        self.worker_start_time = Gauge("segment_worker_start_time_seconds",
                                       "When the worker in this slot started, in seconds since the epoch; it "
                                       "changes each time the slot's worker is replaced", ["worker"],
                                       multiprocess_mode="max", registry=r)
        self.worker_start_time.labels(worker=self.worker).set(time.time())
        # `sha256` names the file itself (a retrained file keeps its name): workers, or replicas, that answer from
        # two different files show as two series, which an alert counts (docker/prometheus-rules.yml).
        self.model_info = Gauge("segment_model_info", "The loaded model (its file's sha256) and the execution "
                                "provider in use", ["provider", "precision", "arch", "model", "sha256"],
                                multiprocess_mode="max", registry=r)
        self._own_collectors: list[Collector] = []  # read at scrape time in this process (GPU gauges)
        # prometheus-client picks per-process value files from this at import; the same holds for rendering.
        self._shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._stages: dict[str, Any] = {}
        self._requests: dict[tuple[str, int], tuple[Any, Any]] = {}

    # Labelled children looked up once: `labels()` validates and locks on every call (14 -> 5 µs for the six
    # observations of one /segment request, measured).
    def queued(self, priority: str, seconds: float) -> None:
        """One image's wait in the inference queue: the `queue` stage and its priority's histogram."""
        self.stage("queue").observe(seconds)
        self.image_waited(priority, seconds)

    def image_waited(self, priority: str, seconds: float) -> None:
        """One image's wait in the inference queue in its priority's histogram alone (each tile of a request run in
        tiles is an image; the request's `queue` stage is observed once)."""
        self._queue_waits[priority].observe(seconds)

    def stage(self, name: str) -> Any:
        """The `stage_duration` histogram of one stage."""
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = self.stage_duration.labels(stage=name)
        return child

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its latency."""
        key = (route, status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (self.requests.labels(route=route, status=str(status)),
                                              self.request_duration.labels(route=route))
        children[0].inc()
        children[1].observe(seconds)

    def start_routes(self, routes: Iterable[str]) -> None:
        """Create the request counters of `routes` (the API's route templates) at 0 for each of `API_STATUSES`."""
        for route in routes:
            for status in API_STATUSES:
                self.requests.labels(route=route, status=str(status))

    def set_model(self, *, provider: str, precision: str, arch: str, model: str, sha256: str) -> None:
        """Publish the loaded model as an info gauge (value 1)."""
        if not self._shared_dir:  # a worker sets it once; clear() is per process there
            self.model_info.clear()
        self.model_info.labels(provider=provider, precision=precision, arch=arch, model=model, sha256=sha256).set(1)

    def count_rejection(self, code: str) -> None:
        """Count one request refused with error `code`."""
        self.rejected.labels(reason=code).inc()

    def register(self, collector: Collector) -> None:
        """A collector read at scrape time by this process (not summed over workers: e.g. the GPU's gauges)."""
        self.registry.register(collector)
        self._own_collectors.append(collector)

    def render(self) -> bytes:
        """The text exposition format: this process's metrics, or every worker's under multiprocess mode."""
        if not self._shared_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._shared_dir)
        for collector in self._own_collectors:
            registry.register(collector)
        return generate_latest(registry)
