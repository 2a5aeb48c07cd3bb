"""Fixed-shape execution (the GPU default), proven on CPU: every session sees one input shape, padding never
reaches an answer, a mask is the same whatever bucket ran it, every bucket is warm before readiness, and
several batches really run at once."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core import engine as engine_module
from service.core.buckets import bucket_for, default_buckets, fill_bucket, normalise_buckets
from service.core.engine import load_engine, uses_fixed_shapes
from service.core.handoff import WorkerThreads
from service.core.letterbox import pad_canvas
from service.core.pipeline import Pipeline
from service.core.sessions import CPU, CUDA, bucket_cuda_options, provider_options
from service.settings import Settings, default_model_path
from testkit.metrics import samples as metric_samples
from testkit.photos import PHOTOS, photo
from tests.service.svc_helpers import png_bytes, scene

DEMO_MODEL = default_model_path()  # the trained embedded demo model


def fixed_engine(model: Path, **overrides):
    settings = Settings(model_path=model, providers="cpu", intra_op_threads=2, fixed_shapes="on", **overrides)
    engine = load_engine(settings.engine_options())
    engine.warm_up()
    return engine


def assert_one_shape_per_session(engine) -> None:
    """Each bucket has its own ORT session, and each session has run exactly one input shape."""
    buckets = engine.runner.buckets
    assert len({id(b.session) for b in buckets}) == len(buckets), "buckets share a session"
    size = engine.input_size
    for bucket in buckets:
        assert bucket.shapes == {(bucket.size, size, size, 3)}, (bucket.size, bucket.shapes)


class SessionSpy:
    """An onnxruntime session that records the shape of every batch it is fed."""

    def __init__(self, session) -> None:
        self.session = session
        self.shapes: list[tuple[int, ...]] = []

    def run(self, names, feeds):
        self.shapes.append(feeds["image"].shape)
        return self.session.run(names, feeds)


class ThreadSpy:
    """An onnxruntime session that records the thread of every run."""

    def __init__(self, session) -> None:
        self.session = session
        self.threads: list[str] = []

    def run(self, names, feeds):
        self.threads.append(threading.current_thread().name)
        return self.session.run(names, feeds)


def test_bucket_arithmetic() -> None:
    assert default_buckets(8) == [1, 2, 4, 8]
    assert default_buckets(12) == [1, 2, 4, 8, 12]
    assert default_buckets(1) == [1]
    assert normalise_buckets([], 8) == [1, 2, 4, 8]
    assert normalise_buckets([4, 2, 2], 8) == [2, 4, 8]  # the batcher's largest batch is always a bucket
    with pytest.raises(ValueError, match="outside"):
        normalise_buckets([0, 4], 8)
    with pytest.raises(ValueError, match="outside"):
        normalise_buckets([16], 8)
    assert [bucket_for(n, [1, 2, 4, 8]) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(9, [1, 2, 4, 8])
    images = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    batch = fill_bucket(images, 4, (7, 8, 9))
    assert batch.shape == (4, 4, 5, 3) and batch.flags.c_contiguous
    assert [int(batch[i].max()) for i in range(3)] == [0, 1, 2]
    assert (batch[3] == np.array([7, 8, 9], np.uint8)).all()  # padding is the mean colour, mapped to 0 in-graph


def test_settings_and_provider_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_BATCH_BUCKETS", "2, 4")
    monkeypatch.setenv("SEGMENT_CUDA_OPTIONS", "prefer_nhwc=0, gpu_mem_limit=4000000000")
    monkeypatch.setenv("SEGMENT_MAX_BATCH_SIZE", "16")
    settings = Settings()
    assert settings.batch_buckets == [2, 4, 16]
    assert settings.cuda_options == {"prefer_nhwc": "0", "gpu_mem_limit": "4000000000"}
    assert provider_options(CUDA) == {"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"}
    assert provider_options(CUDA, settings.cuda_options)["prefer_nhwc"] == "0"  # the setting wins
    assert provider_options(CPU, settings.cuda_options) == {}
    monkeypatch.setenv("SEGMENT_CUDA_OPTIONS", "prefer_nhwc")
    with pytest.raises(ValueError, match="key=value"):
        Settings()
    assert uses_fixed_shapes("auto", CUDA) and not uses_fixed_shapes("auto", CPU)
    assert uses_fixed_shapes("on", CPU) and not uses_fixed_shapes("off", CUDA)


def test_bucket_sessions_grow_their_cuda_arena_by_exactly_what_they_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bucket session's CUDA options ask for exact arena growth under the user's own options, which win; the
    dynamic session, whose shapes change, keeps onnxruntime's default growth. (On this CPU host the CUDA options
    reach `create_session` and are dropped there for the CPU provider, so the spy is where they can be seen.)"""
    calls: list[tuple[dict, dict]] = []
    real = engine_module.create_session

    def spy(path, providers, threads, cuda_options=None, fixed_dims=None):
        calls.append((dict(cuda_options or {}), dict(fixed_dims or {})))
        return real(path, providers, threads, cuda_options, fixed_dims=fixed_dims)

    monkeypatch.setattr(engine_module, "create_session", spy)
    monkeypatch.setenv("SEGMENT_CUDA_OPTIONS", "gpu_mem_limit=4000000000")
    fixed_engine(DEMO_MODEL, max_batch_size=4)
    (dynamic, free), *buckets = calls
    user = {"gpu_mem_limit": "4000000000", "device_id": "0"}  # the device: this process's (the first)
    assert not free and dynamic == user
    assert [dims for _, dims in buckets] and all(dims for _, dims in buckets)  # one fixed shape each
    assert all(options == {"arena_extend_strategy": "kSameAsRequested", **user} for options, _ in buckets), buckets
    assert bucket_cuda_options({"arena_extend_strategy": "kNextPowerOfTwo"}) == {
        "arena_extend_strategy": "kNextPowerOfTwo"}  # the setting wins
    assert bucket_cuda_options(None, cuda_graph=True) == {"arena_extend_strategy": "kSameAsRequested",
                                                          "enable_cuda_graph": "1"}


def test_warm_up_overlaps_as_many_batches_of_each_bucket_as_will_run_at_once() -> None:
    """Two batches in flight may be two of one bucket: warm-up runs each bucket that way once, so the working
    memory (and on CUDA the stream and handles) of a second overlapping run exist before readiness."""
    engine = fixed_engine(DEMO_MODEL, concurrent_batches=2)
    assert [b.max_overlap for b in engine.runner.buckets] == [2] * len(engine.runner.buckets)
    assert all(b.in_flight == 0 for b in engine.runner.buckets)
    assert_one_shape_per_session(engine)
    single = fixed_engine(DEMO_MODEL, concurrent_batches=1)
    assert max(b.max_overlap for b in single.runner.buckets) < 2  # one batch at a time: nothing to overlap


def test_warm_up_runs_every_bucket_on_each_thread_that_will_run_batches() -> None:
    """onnxruntime's CUDA provider makes a thread's cuDNN/cuBLAS handles on that thread's first run of a session:
    warm-up runs each bucket on every inference thread, so no batch after readiness is a thread's first."""
    threads = WorkerThreads(2, "inference")
    try:
        engine = load_engine(Settings(model_path=DEMO_MODEL, providers="cpu", intra_op_threads=1, fixed_shapes="on",
                                      concurrent_batches=2, max_batch_size=4).engine_options())
        engine.warm_up(on_each_thread=threads.run_on_each)
        names = {"inference_0", "inference_1"}
        warmed = {b.size: set(b.threads) for b in engine.runner.buckets}
        assert all(names <= ran for ran in warmed.values()), warmed
        assert [b.max_overlap for b in engine.runner.buckets] == [2, 2, 2]  # both at once, as batches will
        pad = pad_canvas(engine.input_size, engine.input_size, engine.metadata.pad_rgb)
        futures = [threads.submit(engine.run_images, [pad] * n) for n in (1, 2, 3, 4, 1, 4, 2, 3) * 2]
        assert [f.result().shape[0] for f in futures] == [1, 2, 3, 4, 1, 4, 2, 3] * 2
        assert {b.size: set(b.threads) for b in engine.runner.buckets} == warmed  # no thread new to a bucket
        assert_one_shape_per_session(engine)
    finally:
        threads.shutdown()
    with pytest.raises(RuntimeError, match="its own threads"):  # from one of its threads it would wait for itself
        one = WorkerThreads(1, "inference")
        one.submit(one.run_on_each, lambda: None).result(timeout=10)


def test_without_fixed_shapes_a_gpu_session_is_run_on_each_inference_thread_before_readiness() -> None:
    """`SEGMENT_FIXED_SHAPES=off` on a GPU: the one session's per-thread CUDA handles are made during warm-up on
    every inference thread, not by each thread's first batch. On the CPU (no such state) warm-up stays as it was.
    The CPU session stands in for a CUDA one: only the provider the engine reports is changed."""
    for provider, expected in ((CUDA, {"inference_0", "inference_1"}), (CPU, set())):
        threads = WorkerThreads(2, "inference")
        try:
            engine = load_engine(Settings(model_path=DEMO_MODEL, providers="cpu", intra_op_threads=1,
                                          fixed_shapes="off", concurrent_batches=2).engine_options())
            engine.provider = provider
            engine.session = spy = ThreadSpy(engine.session)
            engine.warm_up((1, 2), on_each_thread=threads.run_on_each)
            assert {name for name in spy.threads if name.startswith("inference")} == expected, spy.threads
        finally:
            threads.shutdown()


def test_a_mask_is_the_same_whatever_bucket_ran_it() -> None:
    """The trained demo model on real photos: each photo alone, then inside batches of every size 1..11
    (padded to buckets 1, 2, 4, 8, and 11 = 8 + 3 as two chunks). Padded rows are computed and dropped."""
    engine = fixed_engine(DEMO_MODEL)
    spies = {b.size: SessionSpy(b.session) for b in engine.runner.buckets}  # what each session is fed from now
    warm_runs = {b.size: b.runs for b in engine.runner.buckets}
    for bucket in engine.runner.buckets:
        bucket.session = spies[bucket.size]
    pipeline = Pipeline(engine)
    tensors = [pipeline.prepare_image(photo(name)).tensor for name in PHOTOS]
    tensors += [pipeline.prepare_image(scene(300 + 10 * i, 200)).tensor for i in range(6)]
    alone = [engine.run_images([t])[0] for t in tensors]
    reference = engine.session.run(None, {"image": np.stack(tensors[:4])})[0]  # a plain dynamic session
    for i in range(4):
        np.testing.assert_array_equal(alone[i], reference[i])
    for count in range(1, len(tensors) + 1):
        got = engine.run_images(tensors[:count])
        assert got.shape == (count, engine.input_size, engine.input_size)  # never a padded row
        for i in range(count):
            np.testing.assert_array_equal(got[i], alone[i], err_msg=f"image {i} in a batch of {count}")
    assert_one_shape_per_session(engine)
    size = engine.input_size
    chunks = [1] * len(tensors)  # each alone, then each batch in chunks of at most 8
    for count in range(1, len(tensors) + 1):
        chunks += [8] * (count // 8) + ([count % 8] if count % 8 else [])
    for bucket_size, spy in spies.items():
        assert set(spy.shapes) == {(bucket_size, size, size, 3)}, (bucket_size, set(spy.shapes))
        assert len(spy.shapes) == sum(bucket_for(n, engine.runner.sizes) == bucket_size for n in chunks)
    # The runner's own record (`runs` and `shapes`, in /readyz) counts every one of those runs too.
    assert {b.size: b.runs - warm_runs[b.size] for b in engine.runner.buckets} == {
        size: len(spy.shapes) for size, spy in spies.items()}
    assert engine.padded_size(3) == 4 and engine.padded_size(11) == 12 and engine.padded_size(8) == 8
    # An offline caller's other size runs on its own dynamic session, leaving the buckets' one shape alone.
    odd = engine.run_images([tensors[0][:200, :150]])
    assert odd.shape == (1, 200, 150)
    assert_one_shape_per_session(engine)
    assert all(engine.runner._other_shapes is not b.session for b in engine.runner.buckets)


def _readyz(url: str) -> tuple[int, dict]:
    r = httpx.get(f"{url}/readyz", timeout=10)
    return r.status_code, r.json()


def test_every_bucket_is_warm_before_ready_and_each_session_sees_one_shape(serve, slow_model: Path) -> None:
    server = serve(slow_model, wait_ready=False, fixed_shapes="on", max_batch_size=4, max_wait_ms=200,
                   intra_op_threads=1)
    deadline = time.monotonic() + 120
    seen_warming = False
    while True:
        status, body = _readyz(server.url)
        runner = server.state.engine.runner if server.state.engine is not None else None
        if status == 200:
            # Readiness only once every bucket has been built and run on its shape.
            assert runner is not None and all(b.runs >= 2 and b.warmup_s for b in runner.buckets)
            break
        seen_warming |= body.get("status") == "warming_up"
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    assert seen_warming  # the 768-px model warms three buckets slowly enough to be seen doing it
    assert body["fixed_shapes"] is True and [b["batch_size"] for b in body["buckets"]] == [1, 2, 4]
    assert all(b["warmup_ms"] > 0 and b["memory_bytes"] is not None for b in body["buckets"])

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/segment", content=png_bytes(scene(90 + i, 70)),
                                                      params={"output": "stats"}) for i in range(n)))

    sizes_run = set()
    for n in (1, 3, 2, 5, 1, 4):
        responses = asyncio.run(burst(n))
        assert [r.status_code for r in responses] == [200] * n
        sizes_run |= {int(r.headers["x-batch-size"]) for r in responses}
    assert len(sizes_run) >= 2, sizes_run  # batches of several sizes really ran
    assert_one_shape_per_session(server.state.engine)
    with server.client() as client:
        text = client.get("/metrics").text
        body = client.get("/readyz").json()
    padding = metric_samples(text, "segment_batch_padding_images_total")[()]
    runner = server.state.engine.runner
    assert padding == runner.padded_rows and runner.real_rows == 16
    assert (padding > 0) == (3 in sizes_run)  # only a batch of 3 pads (to 4) with buckets 1, 2, 4
    assert body["padding_fraction"] == pytest.approx(runner.padded_rows / (runner.padded_rows + 16), abs=1e-3)
    memory = metric_samples(text, "segment_bucket_memory_bytes")
    assert {dict(k)["bucket"] for k in memory} == {"1", "2", "4"}


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_server_warms_every_bucket_on_each_of_its_inference_threads(serve, concurrency: int) -> None:
    """After readiness no batch is the first run of its bucket on its thread (on CUDA: no handles made then)."""
    server = serve(DEMO_MODEL, fixed_shapes="on", max_batch_size=4, concurrent_batches=concurrency,
                   intra_op_threads=1, max_wait_ms=50)
    threads = {f"inference_{i}" for i in range(concurrency)}
    warmed = {b.size: set(b.threads) for b in server.state.engine.runner.buckets}
    assert all(threads <= ran for ran in warmed.values()), warmed

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/segment", content=png_bytes(scene(90 + i, 70)),
                                                      params={"output": "stats"}) for i in range(n)))

    for n in (1, 4, 3, 2, 6, 1):
        assert [r.status_code for r in asyncio.run(burst(n))] == [200] * n
    ran = {b.size: set(b.threads) for b in server.state.engine.runner.buckets}
    assert ran == warmed  # every batch ran on a thread that had run its bucket before readiness


@pytest.mark.parametrize("concurrency", [1, 2])
def test_concurrent_batches_overlap(serve, very_slow_model: Path, concurrency: int) -> None:
    server = serve(very_slow_model, max_batch_size=1, max_wait_ms=0, concurrent_batches=concurrency,
                   intra_op_threads=1)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/segment", content=png_bytes(scene(80, 60 + i)),
                                                      params={"output": "stats"}) for i in range(4)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 4
    assert server.state.batcher.peak_in_flight == concurrency
    assert server.state.batcher.in_flight == 0
    assert _readyz(server.url)[1]["concurrent_batches"] == concurrency


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_batch_waits_for_decoding_images_only_while_no_worker_is_free(concurrency: int) -> None:
    """One image queued, another announced (being decoded) that arrives 0.3 s later, max_wait 3 s. With one
    worker the batch waits for it (batching); with a second worker free it runs at once and the late image
    takes the free worker."""
    from service.batcher import Batcher

    batches: list[int] = []

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        batches.append(len(images))
        return np.zeros((len(images), 2, 2), np.uint8)

    async def scenario() -> float:
        batcher = Batcher(run_images, max_batch_size=8, max_wait_ms=3000, max_queue=8, concurrency=concurrency)
        batcher.start()
        tensor = np.zeros((2, 2, 3), np.uint8)
        start = time.perf_counter()

        async def late() -> None:
            with batcher.expecting():
                await asyncio.sleep(0.3)
            await batcher.infer(tensor, 10)

        with batcher.expecting():  # announced before the first image is queued, as the app does
            pending = asyncio.ensure_future(late())
            await asyncio.sleep(0)
        first = await batcher.infer(tensor, 10)
        first_s = time.perf_counter() - start
        await pending
        await batcher.stop()
        assert first.labels.shape == (2, 2)
        return first_s

    first_s = asyncio.run(scenario())
    if concurrency == 1:
        assert batches == [2] and 0.25 < first_s < 2.5, (batches, first_s)
    else:
        assert batches == [1, 1] and first_s < 0.25, (batches, first_s)
