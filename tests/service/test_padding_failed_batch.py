"""The batch size and padding metrics count the batches that ran, on real onnxruntime sessions in fixed shapes
(buckets 1, 2, 4): a batch of three whose run fails inside onnxruntime (one poisoned image, a data-dependent
Gather out of bounds) computed no padding, and after it its images run again alone, each a batch of one."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import generate_latest

from service.batcher import Batcher
from service.core.engine import Engine, load_engine
from service.core.letterbox import pad_canvas
from service.core.pipeline import Pipeline
from service.errors import ApiError
from service.inference_guard import InferenceHealth
from service.metrics import Metrics
from service.settings import Settings
from testkit.metrics import samples as metric_samples
from tests.reliability.faults_helpers import make_poisonable_model, poisoned
from tests.service.svc_helpers import png_bytes, scene


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    model = make_poisonable_model(tmp_path_factory.mktemp("padding") / "poison.onnx")
    settings = Settings(model_path=model, providers="cpu", intra_op_threads=1, fixed_shapes="on", max_batch_size=4)
    engine = load_engine(settings.engine_options())
    engine.warm_up()
    assert engine.runner is not None and engine.runner.sizes == [1, 2, 4]
    return engine


def run_batch(engine: Engine, metrics: Metrics, images: list[np.ndarray], runs: list[int] | None = None,
              ) -> list[object]:
    """Queue the letterboxed uploads together (one batch, never split: no plan) and answer them; the size of each
    model run, in order, goes to `runs`."""
    pipeline = Pipeline(engine)
    sizes = runs if runs is not None else []

    def run_images(batch: list[np.ndarray]) -> np.ndarray:
        sizes.append(len(batch))
        return engine.run_images(batch)

    tensors = [pipeline.preprocess(png_bytes(image)).tensor for image in images]

    async def scenario() -> list[object]:
        batcher = Batcher(run_images, max_batch_size=4, max_wait_ms=1000, max_queue=16, metrics=metrics,
                          padded_size=engine.padded_size, health=InferenceHealth(failures_to_unready=3),
                          probe_image=pad_canvas(engine.input_size, engine.input_size, engine.metadata.pad_rgb))
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.infer(t, 60) for t in tensors), return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(scenario())


def scraped(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    failures = metric_samples(text, "segment_inference_failures_total")
    return {"padding": metric_samples(text, "segment_batch_padding_images_total")[()],
            "batches": metric_samples(text, "segment_batch_size_count")[()],
            "images": metric_samples(text, "segment_batch_size_sum")[()],
            "failed_batches": failures[(("run", "batch"),)], "failed_alone": failures[(("run", "image"),)]}


def test_a_failed_batch_counts_no_padding_and_only_the_runs_that_worked(engine: Engine) -> None:
    runner = engine.runner
    assert runner is not None
    runner.plan = {}  # run every count whole: three images pad to the bucket of four
    padded_before = runner.padded_rows
    metrics = Metrics(max_batch_size=4)

    runs: list[int] = []
    outcomes = run_batch(engine, metrics, [scene(96, 70), poisoned(96, 71), scene(96, 72)], runs)
    error = outcomes[1]
    assert isinstance(error, ApiError) and error.code == "inference_failed" and "out of" in str(error), error
    assert runs == [3, 1, 1, 1, 1], runs  # formed as one batch; it failed, the probe, then each image alone
    assert all(result.batch_size == 1 for result in (outcomes[0], outcomes[2])), outcomes  # answered by its own run
    after_failure = scraped(metrics)
    assert after_failure["failed_batches"] == 1 and after_failure["failed_alone"] == 1
    # The batch of three (bucket 4) failed: no padding ran. Its two clean images ran alone (bucket 1, no padding).
    assert after_failure["padding"] == 0
    assert (after_failure["batches"], after_failure["images"]) == (2, 2)
    assert runner.padded_rows == padded_before  # the engine's own count (/readyz) agrees

    # The same three images clean: the batch runs, padded to four, and its padding row counts.
    outcomes = run_batch(engine, metrics, [scene(96, 70), scene(96, 71), scene(96, 72)])
    assert [getattr(result, "batch_size", result) for result in outcomes] == [3, 3, 3]
    after_clean = scraped(metrics)
    assert after_clean["padding"] == 1 == runner.padded_rows - padded_before
    assert (after_clean["batches"], after_clean["images"]) == (3, 5)
    assert after_clean["failed_batches"] == 1
