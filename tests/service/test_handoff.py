"""`service.core.handoff.WorkerThreads`: what `run_in_executor` on a `ThreadPoolExecutor` gave the codec and batcher."""

from __future__ import annotations

import asyncio
import threading
import time

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
