"""Bucket sessions with their one shape fixed, and bound execution (IOBinding buffers, one session per concurrent
batch; CUDA graphs on a GPU), proven on CPU: ORT itself refuses any other shape, the fixed graph has no shape
computation left for the CPU (what CUDA graph capture needs), bound answers equal plain ones and are never
overwritten by the next run, and bound instances really run at once."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.core.engine import EngineError, load_engine
from service.core.pipeline import Pipeline
from service.core.sessions import fixed_dims, session_options
from service.settings import Settings, default_model_path
from service.startup import open_engine
from testkit.photos import PHOTOS, photo
from tests.service.svc_helpers import png_bytes, scene

DEMO_MODEL = default_model_path()
# Nodes that compute shapes at run time; the CUDA provider places them on the CPU, which forbids graph capture.
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Slice", "Reshape", "ConstantOfShape", "Expand"}


def engine_with(model: Path, **overrides):
    settings = Settings(model_path=model, providers="cpu", intra_op_threads=1, fixed_shapes="on", **overrides)
    engine = load_engine(settings.engine_options())
    engine.warm_up()
    return engine


def tensors(engine) -> list[np.ndarray]:
    pipeline = Pipeline(engine)
    images = [photo(name) for name in PHOTOS] + [scene(300 + 10 * i, 200) for i in range(6)]
    return [pipeline.prepare_image(image).tensor for image in images]


def test_fixed_dims_pins_named_dimensions_only() -> None:
    assert fixed_dims(["batch", "height", "width", 3], 4, 320, 256) == {"batch": 4, "height": 320, "width": 256}
    assert fixed_dims(["N", 320, 320, 3], 2, 320, 320) == {"N": 2}
    assert fixed_dims([None, None, None, 3], 2, 320, 320) == {}
    assert fixed_dims(["batch", "side", "side", 3], 1, 320, 320) == {"batch": 1, "side": 320}
    assert fixed_dims(["batch", "side", "side", 3], 1, 320, 240) == {}  # one name, two values: leave dynamic


def test_every_bucket_session_has_its_shape_fixed_and_refuses_any_other() -> None:
    engine = engine_with(DEMO_MODEL, max_batch_size=4)
    size = engine.input_size
    assert engine.session.get_inputs()[0].shape == ["batch", "height", "width", 3]  # the dynamic session
    for bucket in engine.runner.buckets:
        assert bucket.session.get_inputs()[0].shape == [bucket.size, size, size, 3]
        assert bucket.session.get_outputs()[0].shape == [bucket.size, size, size]
        wrong = np.zeros((bucket.size + 1, size, size, 3), np.uint8)
        with pytest.raises(Exception, match=r"(?i)invalid dimensions"):
            bucket.session.run(None, {"image": wrong})


@pytest.mark.parametrize("model", ["demo", "tiny", "tiny_fp16"])
def test_a_fixed_shape_graph_has_no_shape_computation_left(model: str, tiny_onnx_model: Path,
                                                           tmp_path: Path) -> None:
    """Optimised at the provider-independent level, the dynamic graph keeps its Shape/Gather/Concat chain
    (feeding the Resize sizes); with the dimensions fixed it folds away entirely, in the fp16 variant (what
    CUDA runs by default) too."""
    path = DEMO_MODEL if model == "demo" else tiny_onnx_model
    if model == "tiny_fp16":
        from model_export.quantize import convert_fp16

        path = tmp_path / "tiny.fp16.onnx"
        convert_fp16(tiny_onnx_model, path)

    def optimised_ops(dims: dict[str, int]) -> set[str]:  # the op types left after constant folding
        options = session_options(1, dims)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(tmp_path / f"{len(dims)}.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}

    size = int(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map["input_size"])
    dynamic = optimised_ops({})
    assert dynamic >= {"Shape", "Gather"}, dynamic
    fixed = optimised_ops(fixed_dims(["batch", "height", "width", 3], 2, size, size))
    assert not fixed & SHAPE_OPS, fixed
    assert fixed >= {"Conv", "Resize", "ArgMax"}


def test_bound_buckets_answer_like_plain_ones_and_own_their_answers() -> None:
    plain = engine_with(DEMO_MODEL)
    bound = engine_with(DEMO_MODEL, io_binding="on", concurrent_batches=2)
    images = tensors(plain)
    for bucket in bound.runner.buckets:
        assert bucket.pool is not None and len(bucket.sessions) == 2
        assert len({id(s) for s in bucket.sessions}) == 2
        for session in bucket.sessions:
            assert session.get_inputs()[0].shape == [bucket.size, bound.input_size, bound.input_size, 3]
    for count in range(1, len(images) + 1):
        np.testing.assert_array_equal(bound.run_images(images[:count]), plain.run_images(images[:count]),
                                      err_msg=f"a batch of {count}")
    # A bound host buffer is overwritten by the next run: an answer must be a copy, not a view of it.
    first = bound.run_images(images[:1])
    kept = first.copy()
    for _ in bound.runner.buckets[0].sessions:  # every instance of the bucket runs once more
        bound.run_images(images[1:2])
    np.testing.assert_array_equal(first, kept)
    assert not (kept == bound.run_images(images[1:2])).all()  # the two photos really differ
    assert bound.runner.describe()["io_binding"] == "on"
    assert all(b["sessions"] == 2 for b in bound.runner.describe()["buckets"])


def test_bound_instances_run_concurrent_batches(slow_model: Path) -> None:
    engine = engine_with(slow_model, io_binding="on", concurrent_batches=2, max_batch_size=1)
    image = np.full((engine.input_size, engine.input_size, 3), 90, np.uint8)
    expected = engine.run_images([image])
    barrier = threading.Barrier(2)
    results: list[np.ndarray] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(2):
            results.append(engine.run_images([image]))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4 and all((r == expected).all() for r in results)
    pool = engine.runner.buckets[0].pool
    assert pool.peak_in_use == 2  # both instances ran at once, none was shared


def test_each_bound_session_runs_on_one_thread_of_its_own_warm_up_included(slow_model: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's CUDA provider keeps a captured graph per thread and cannot replay one session's graph from
    several threads: warm-up (the caller's thread) and batches (two other threads) must all reach a bound session
    on the one thread that captured it."""
    settings = Settings(model_path=slow_model, providers="cpu", intra_op_threads=1, fixed_shapes="on",
                        io_binding="on", concurrent_batches=2, max_batch_size=2)
    engine = load_engine(settings.engine_options())
    seen: dict[int, set[int]] = {}  # session -> the threads it ran on
    original = ort.InferenceSession.run_with_iobinding

    def recording(session: ort.InferenceSession, *args: object) -> object:
        seen.setdefault(id(session), set()).add(threading.get_ident())
        return original(session, *args)

    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", recording)
    engine.warm_up()
    image = np.full((engine.input_size, engine.input_size, 3), 90, np.uint8)
    barrier = threading.Barrier(2)

    def worker(count: int) -> None:
        barrier.wait()
        for _ in range(3):
            engine.run_images([image] * count)

    threads = [threading.Thread(target=worker, args=(count,)) for count in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    instances = [i for b in engine.runner.buckets for i in b.pool.runs]
    assert len(seen) == len(instances) == 4  # every instance ran, warm-up and batches
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len(set().union(*seen.values())) == 4  # and each on a thread of its own
    assert threading.get_ident() not in set().union(*seen.values())


def test_io_binding_needs_fixed_shapes_and_cuda_graphs_need_cuda() -> None:
    with pytest.raises(EngineError, match="fixed_shapes") as err:
        load_engine(Settings(model_path=DEMO_MODEL, providers="cpu", io_binding="on").engine_options())
    assert err.value.setting == "io_binding"
    with pytest.raises(EngineError, match=r"SEGMENT_IO_BINDING: .*needs the CUDA provider.*CPUExecutionProvider"):
        open_engine(Settings(model_path=DEMO_MODEL, providers="cpu", fixed_shapes="on", io_binding="cuda_graph"))
    with pytest.raises(ValueError, match="io_binding"):
        Settings(io_binding="graphs")


def test_a_bound_server_answers_byte_for_byte_like_a_plain_one(serve) -> None:
    common = {"fixed_shapes": "on", "max_batch_size": 4, "max_wait_ms": 20, "intra_op_threads": 1}
    bound = serve(DEMO_MODEL, io_binding="on", concurrent_batches=2, **common)
    plain = serve(DEMO_MODEL, **common)
    bodies = [png_bytes(scene(200 + 20 * i, 150)) for i in range(6)]

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/segment", content=b, params={"output": "labels"})
                                          for b in bodies))

    got, want = asyncio.run(burst(bound.url)), asyncio.run(burst(plain.url))
    assert [r.status_code for r in got] == [200] * len(bodies)
    assert [r.content for r in got] == [r.content for r in want]
    ready = httpx.get(f"{bound.url}/readyz", timeout=10).json()
    assert ready["io_binding"] == "on" and ready["concurrent_batches"] == 2
    assert [b["sessions"] for b in ready["buckets"]] == [2, 2, 2]
    assert httpx.get(f"{plain.url}/readyz", timeout=10).json()["io_binding"] == "off"


def test_a_bound_bucket_that_cannot_run_keeps_readiness_off_and_names_the_mode(serve, broken_model: Path) -> None:
    """A graph that fails on its bucket shape (as a CUDA graph onnxruntime cannot capture would): /readyz stays
    503 and its error names the execution mode to turn off."""
    server = serve(broken_model, wait_ready=False, fixed_shapes="on", io_binding="on", max_batch_size=2)
    deadline = time.monotonic() + 60
    while server.state.warmup_error is None:
        assert time.monotonic() < deadline, "warm-up neither failed nor finished"
        time.sleep(0.05)
    r = httpx.get(f"{server.url}/readyz", timeout=10)
    assert r.status_code == 503
    assert "io_binding 'on'" in r.json()["error"], r.json()
