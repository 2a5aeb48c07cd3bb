"""The codec pool takes a finished request's encode before queued decodes of newer requests (`Codec.encode` runs at
`ENCODE_PRIORITY` in `WorkerThreads`), an interactive request's jobs before a bulk one's, in submission order within
one priority, and a queued job of either priority
is still skipped when its wait is cancelled, cancelled by `shutdown(cancel_futures=True)`, or run before the
threads end on a plain `shutdown`."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from service.codec import ENCODE_PRIORITY, Codec
from service.core.decode import Upload
from service.core.handoff import WorkerThreads
from service.core.pipeline import Pipeline, SegmentOptions
from tests.service.svc_helpers import rule_pipeline


def png(width: int, height: int) -> bytes:
    """Left half red (class 1 for the rule model), right half dark (background)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (200, 40, 30)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


async def until(event: threading.Event) -> None:
    """Wait on the loop, without blocking it, until a codec thread sets `event`."""
    for _ in range(500):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the codec thread never got there")


class CodecOrder:
    """What a test sees of the one codec thread: `hold`, a `before_decode` that keeps it busy until `release` is
    set, and `order`, the order in which decodes (`decoding(name)`) and encodes (`keep`, named `encode_name`)
    reached it."""

    def __init__(self, encode_name: str = "encode") -> None:
        self.order: list[str] = []
        self.holding, self.release = threading.Event(), threading.Event()
        self.encode_name = encode_name

    def hold(self, _upload: Upload) -> None:
        self.holding.set()
        assert self.release.wait(10)

    def decoding(self, name: str) -> Callable[[Upload], None]:
        return lambda _upload: self.order.append(name)

    def keep(self, _label_map: object) -> bool:
        self.order.append(self.encode_name)  # called in the encode's job, before the render
        return False


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return rule_pipeline(tmp_path_factory.mktemp("priority"))


@pytest.fixture()
def codec(pipeline: Pipeline) -> Iterator[Codec]:
    threads = WorkerThreads(1, "codec")
    yield Codec(pipeline, threads)
    threads.shutdown()


def test_an_encode_runs_before_decodes_queued_ahead_of_it(codec: Codec, pipeline: Pipeline) -> None:
    """The one codec thread is held inside a decode (at `before_decode`, in the codec thread); two newer decodes
    queue, then a finished request's encode. Released, the thread takes the encode first, then the decodes in
    their order."""
    seen = CodecOrder()
    order, holding, release, hold, decoding, keep = (seen.order, seen.holding, seen.release, seen.hold,
                                                      seen.decoding, seen.keep)
    options = SegmentOptions(output="labels")

    async def main() -> tuple[tuple[bytes, str, bool], list[tuple[int, int]]]:
        done = await codec.decode(png(64, 48), full_resolution=False)  # a request whose model run is over
        (labels,) = pipeline.infer([done.tensor])
        held = asyncio.ensure_future(codec.decode(png(40, 30), full_resolution=False, before_decode=hold))
        await until(holding)
        queued = []
        for name, size in (("decode-1", (50, 20)), ("decode-2", (30, 60))):
            queued.append(asyncio.ensure_future(codec.decode(png(*size), full_resolution=False,
                                                             before_decode=decoding(name))))
            await asyncio.sleep(0)  # the task runs up to its wait: its job is queued now, in this order
        encode = asyncio.ensure_future(codec.encode(done, labels, options, {"id": "r", "model": "m"}, keep=keep))
        await asyncio.sleep(0)
        assert order == []  # all three wait behind the held decode
        release.set()
        answer = await encode
        decoded = [await task for task in (held, *queued)]
        return answer, [(p.info.orig_w, p.info.orig_h) for p in decoded]

    (body, media, kept), sizes = asyncio.run(main())
    assert order == ["encode", "decode-1", "decode-2"]
    assert sizes == [(40, 30), (50, 20), (30, 60)]  # every decode still answered, each with its own upload
    assert media == "image/png" and not kept
    with Image.open(io.BytesIO(body)) as answer:  # the encode's answer is the finished request's labels
        classes = np.asarray(answer)
    assert classes.shape == (48, 64)
    assert (classes[:, :30] == 1).all() and (classes[:, 34:] == 0).all()


def test_an_interactive_requests_codec_jobs_run_before_every_bulk_ones(codec: Codec, pipeline: Pipeline) -> None:
    """The one codec thread is held inside a decode; a bulk request's decode and a bulk request's encode queue, then
    an interactive request's decode (`priority=bulk`: service/batch_line.py). Released, the thread takes the
    interactive decode first, then the bulk encode, then the bulk decode."""
    seen = CodecOrder("bulk-encode")
    order, holding, release, hold, decoding, keep = (seen.order, seen.holding, seen.release, seen.hold,
                                                      seen.decoding, seen.keep)
    options = SegmentOptions(output="labels")

    async def main() -> None:
        done = await codec.decode(png(64, 48), full_resolution=False, bulk=True)
        (labels,) = pipeline.infer([done.tensor])
        held = asyncio.ensure_future(codec.decode(png(40, 30), full_resolution=False, before_decode=hold))
        await until(holding)
        jobs = [asyncio.ensure_future(codec.decode(png(50, 20), full_resolution=False,
                                                   before_decode=decoding("bulk-decode"), bulk=True))]
        await asyncio.sleep(0)
        jobs.append(asyncio.ensure_future(codec.encode(done, labels, options, {"id": "r", "model": "m"}, keep=keep,
                                                       bulk=True)))
        await asyncio.sleep(0)
        jobs.append(asyncio.ensure_future(codec.decode(png(30, 60), full_resolution=False,
                                                       before_decode=decoding("interactive-decode"))))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(held, *jobs)

    asyncio.run(main())
    assert order == ["interactive-decode", "bulk-encode", "bulk-decode"]


def test_a_saturated_pool_takes_higher_priority_first_and_fifo_within_one() -> None:
    """Both threads held; three jobs queued at priority 0, then two at `ENCODE_PRIORITY`. One thread freed takes the
    two encodes in order, then the three decodes in order; the other is still held throughout."""
    threads = WorkerThreads(2, "busy")
    gates = [threading.Event(), threading.Event()]
    started = [threading.Event(), threading.Event()]
    order: list[str] = []

    def held(i: int) -> str:
        started[i].set()
        assert gates[i].wait(10)
        return threading.current_thread().name

    async def main() -> None:
        blocked = [asyncio.ensure_future(threads.run(held, i)) for i in range(2)]
        for event in started:
            await until(event)
        jobs = [asyncio.ensure_future(threads.run(order.append, f"decode-{i}")) for i in range(3)]
        jobs += [asyncio.ensure_future(threads.run(order.append, f"encode-{i}", priority=ENCODE_PRIORITY))
                 for i in range(2)]
        await asyncio.sleep(0)  # every job queued
        gates[1].set()
        await asyncio.gather(*jobs, blocked[1])
        assert not blocked[0].done()  # one thread did them all, one after another
        gates[0].set()
        assert {await task for task in blocked} == {"busy_0", "busy_1"}

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert order == ["encode-0", "encode-1", "decode-0", "decode-1", "decode-2"]


def test_cancelled_waits_and_failures_keep_their_meaning_at_either_priority() -> None:
    threads = WorkerThreads(1, "t")
    gate, started, ran = threading.Event(), threading.Event(), []

    def block() -> None:
        started.set()
        assert gate.wait(10)

    def fail() -> None:
        raise KeyError("urgent boom")

    async def main() -> None:
        blocker = asyncio.ensure_future(threads.run(block))
        await until(started)
        skipped_low = asyncio.ensure_future(threads.run(ran.append, "low"))
        skipped_high = asyncio.ensure_future(threads.run(ran.append, "high", priority=ENCODE_PRIORITY))
        failing = asyncio.ensure_future(threads.run(fail, priority=ENCODE_PRIORITY))
        kept = asyncio.ensure_future(threads.run(ran.append, "kept"))
        await asyncio.sleep(0)
        skipped_low.cancel()
        skipped_high.cancel()
        await asyncio.sleep(0)
        gate.set()
        await blocker
        with pytest.raises(KeyError, match="urgent boom"):
            await failing
        await kept
        assert skipped_low.cancelled() and skipped_high.cancelled()

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert ran == ["kept"]


@pytest.mark.parametrize("cancel_futures", [False, True])
def test_shutdown_runs_or_cancels_queued_jobs_of_every_priority(cancel_futures: bool) -> None:
    """The shutdown marker sorts after every job: a plain shutdown still runs all that was queued (at either
    priority) before the threads end; `cancel_futures` cancels them all."""
    threads = WorkerThreads(1, "down")
    gate, started, outcomes = threading.Event(), threading.Event(), {}

    def block() -> str:
        started.set()
        assert gate.wait(10)
        return "blocked"

    async def main() -> None:
        blocker = asyncio.ensure_future(threads.run(block))
        await until(started)
        low = asyncio.ensure_future(threads.run(lambda: "low"))
        high = asyncio.ensure_future(threads.run(lambda: "high", priority=ENCODE_PRIORITY))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(asyncio.to_thread(threads.shutdown, True, cancel_futures=cancel_futures))
        await asyncio.sleep(0.05)
        gate.set()
        await stopping
        outcomes.update(blocker=await blocker)
        await asyncio.wait([low, high], timeout=5)  # a job left behind the ended threads would never answer
        for name, task in (("low", low), ("high", high)):
            outcomes[name] = "pending" if not task.done() else "cancelled" if task.cancelled() else task.result()

    asyncio.run(main())
    queued = "cancelled" if cancel_futures else None
    assert outcomes == {"blocker": "blocked", "low": queued or "low", "high": queued or "high"}
    assert not [t for t in threading.enumerate() if t.name == "down_0"]
    with pytest.raises(RuntimeError, match="after shutdown"):
        threads.submit(lambda: None)


def test_heavy_decodes_take_interactive_requests_first(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full-resolution decodes of large images run in a pool of their own; there too an interactive request's
    decode goes before the bulk ones queued ahead of it (every decode heavy here: the threshold set to 0)."""
    monkeypatch.setattr("service.codec.HEAVY_DECODE_PIXELS", 0)
    threads, heavy = WorkerThreads(1, "codec"), WorkerThreads(1, "heavy")
    codec = Codec(pipeline, threads, heavy_threads=heavy)
    release = threading.Event()
    finished: list[str] = []

    async def main() -> None:
        blocker = heavy.submit(release.wait, 10)  # the one heavy thread busy
        jobs = []
        for name, bulk in (("bulk-1", True), ("bulk-2", True), ("interactive", False)):
            job = asyncio.ensure_future(codec.decode(png(40, 30), full_resolution=True, bulk=bulk))
            job.add_done_callback(lambda _job, name=name: finished.append(name))
            jobs.append(job)
            for _ in range(50):  # its header read in the codec pool, then queued in the heavy pool
                await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*jobs)
        assert blocker.result(5)

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
        heavy.shutdown()
    assert finished == ["interactive", "bulk-1", "bulk-2"]
