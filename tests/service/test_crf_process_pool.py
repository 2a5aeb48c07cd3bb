"""`service.core.crf.CrfPool`, the worker processes that run the dense CRF for the service, on its own: the labels
are exactly those of the in-process CRF, its places are bounded (`CrfBusy` beyond, at once), and `close()` ends a
refinement still running at once rather than waiting for it. Real spawned processes and real pydensecrf."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from service.core import crf
from service.core.letterbox import LetterboxInfo, letterbox
from testkit.photos import photo
from tests.reliability.crf_process_helpers import alive, crf_workers


def _case(image: np.ndarray, size: int, classes: int) -> tuple[np.ndarray, np.ndarray, LetterboxInfo]:
    """A letterboxed canvas, made-up labels with edges for the CRF to move (bands by brightness) and its box."""
    canvas, info = letterbox(image, size, (124, 116, 104))
    labels = (canvas.mean(axis=2) * classes // 256).astype(np.uint8)
    return canvas, labels, info


def _noise(size: int) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, (size, size, 3), np.uint8)


@pytest.mark.parametrize(("image", "size", "classes"), [(photo("coffee.png", (400, 300)), 320, 7),
                                                         (photo("astronaut.png", (300, 500)), 257, 21)])
def test_labels_are_those_of_the_in_process_crf(image: np.ndarray, size: int, classes: int) -> None:
    canvas, labels, info = _case(image, size, classes)
    pool = crf.CrfPool(1)
    try:
        got = asyncio.run(pool.refine(canvas, labels, info, classes))
    finally:
        pool.close()
    probs = crf.probs_from_labels(labels, classes)  # as the pipeline computed it before: scores for the whole canvas
    np.testing.assert_array_equal(got, crf.crf_on_canvas(canvas, probs, info, crf.CrfParams()))
    np.testing.assert_array_equal(got, crf.refine_labels(canvas, labels, info, classes))
    assert got.dtype == np.uint8 and not np.array_equal(got, labels)


def test_refinements_beyond_its_places_are_refused_at_once() -> None:
    canvas, labels, info = _case(_noise(200), 200, 5)
    pool = crf.CrfPool(1, queued=1)

    async def three() -> list[object]:
        tasks = [asyncio.ensure_future(pool.refine(canvas, labels, info, 5)) for _ in range(3)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(three())
        assert isinstance(results[2], crf.CrfBusy), results[2]
        for result in results[:2]:
            np.testing.assert_array_equal(result, crf.refine_labels(canvas, labels, info, 5))
        # The places come back as refinements end.
        np.testing.assert_array_equal(asyncio.run(pool.refine(canvas, labels, info, 5)), results[0])
    finally:
        pool.close()


def test_close_ends_a_refinement_still_running_at_once() -> None:
    canvas, labels, info = _case(_noise(700), 700, 21)  # seconds of CRF on one worker

    async def close_while_refining() -> tuple[BaseException | None, float, list[int]]:
        pool = crf.CrfPool(1)
        running = asyncio.ensure_future(pool.refine(canvas, labels, info, 21))
        while not (workers := crf_workers(os.getpid())):  # its worker started
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # and has begun refining (it takes seconds)
        start = time.perf_counter()
        pool.close()
        closed_s = time.perf_counter() - start
        with pytest.raises(crf.CrfBusy):
            await pool.refine(canvas, labels, info, 21)
        return (await asyncio.gather(running, return_exceptions=True))[0], closed_s, workers

    outcome, closed_s, workers = asyncio.run(close_while_refining())
    assert closed_s < 1.0, closed_s
    assert isinstance(outcome, crf.CrfFailed), outcome  # nobody waits for it in the server by then
    assert workers and not any(alive(pid) for pid in workers)
