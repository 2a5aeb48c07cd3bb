"""`service.core.handoff.WorkerThreads`: what `run_in_executor` on a `ThreadPoolExecutor` gave the codec and batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

import pytest

from service.core.handoff import WorkerThreads


def test_run_returns_the_result_from_a_named_worker_thread() -> None:
    threads = WorkerThreads(2, "codec")

    async def main() -> tuple[int, str]:
        return await threads.run(lambda a, b: (a + b, threading.current_thread().name), 2, 3)

    try:
        total, name = asyncio.run(main())
    finally:
        threads.shutdown()
    assert total == 5 and name in ("codec_0", "codec_1")


def test_run_raises_what_the_call_raised() -> None:
    threads = WorkerThreads(1, "t")

    def fail() -> None:
        raise KeyError("boom")

    async def main() -> None:
        await threads.run(fail)

    try:
        with pytest.raises(KeyError, match="boom"):
            asyncio.run(main())
    finally:
        threads.shutdown()


def test_a_wait_cancelled_before_a_worker_takes_the_job_skips_it() -> None:
    threads = WorkerThreads(1, "t")
    gate, ran = threading.Event(), []

    async def main() -> None:
        blocker = asyncio.ensure_future(threads.run(gate.wait))
        skipped = asyncio.ensure_future(threads.run(ran.append, 1))
        await asyncio.sleep(0.05)
        skipped.cancel()
        await asyncio.sleep(0)
        gate.set()
        await blocker
        assert await threads.run(lambda: 7) == 7  # the worker carries on after the skipped job

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert ran == []


def test_submit_is_an_executor_submit() -> None:
    threads = WorkerThreads(2, "t")
    try:
        assert threads.submit(pow, 2, 10).result(5) == 1024
        assert threads.submit(lambda *, x: x * 2, x=21).result(5) == 42
        with pytest.raises(ZeroDivisionError):
            threads.submit(lambda: 1 / 0).result(5)
    finally:
        threads.shutdown()


def test_shutdown_waits_cancels_queued_jobs_and_refuses_new_ones() -> None:
    threads = WorkerThreads(1, "t")
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.2)
        return "done"

    running = threads.submit(slow)
    started.wait(5)
    queued = threads.submit(lambda: "never")
    threads.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) == "done" and queued.cancelled()
    assert not any(t.is_alive() for t in threading.enumerate() if t.name == "t_0")
    with pytest.raises(RuntimeError, match="after shutdown"):
        threads.submit(lambda: None)


def test_a_thread_is_added_only_when_none_is_idle() -> None:
    seen: list[str] = []
    threads = WorkerThreads(2, "lazy", initializer=lambda: seen.append(threading.current_thread().name))
    assert not [t for t in threading.enumerate() if t.name.startswith("lazy_")]
    for _ in range(5):  # one after another: one thread does them all
        threads.submit(lambda: None).result(5)
    assert seen == ["lazy_0"]
    gate = threading.Event()
    blocked = threads.submit(gate.wait)
    threads.submit(lambda: None).result(5)  # lazy_0 is busy: a second thread takes this one
    gate.set()
    blocked.result(5)
    threads.shutdown()
    assert seen == ["lazy_0", "lazy_1"]


def test_a_job_submitted_as_soon_as_the_last_answer_arrives_reuses_its_thread() -> None:
    """The thread is idle before its answer is delivered: a caller that submits its next job the moment it has the
    answer (here: in the future's done-callback, which runs as the answer is set) found no idle thread, and a
    second thread (and malloc arena) started for jobs that never overlap."""
    seen: list[str] = []
    threads = WorkerThreads(2, "chain", initializer=lambda: seen.append(threading.current_thread().name))
    gate = threading.Event()
    first = threads.submit(gate.wait)
    follow_up: list[Future[str]] = []
    submitted = threading.Event()

    def submit_next(_: Future[object]) -> None:
        follow_up.append(threads.submit(lambda: threading.current_thread().name))
        submitted.set()

    first.add_done_callback(submit_next)
    gate.set()  # the callback is registered before the answer: it runs in the worker as the answer is set
    assert submitted.wait(5)
    assert follow_up[0].result(5) == "chain_0"
    threads.shutdown()
    assert seen == ["chain_0"]
