"""`POST /segment?priority=`: interactive requests are run before every bulk one waiting, and bulk requests may
fill only their share of the queue (`SEGMENT_BULK_QUEUE_SHARE`), so a bulk backlog never refuses or delays an
interactive request beyond the batches already running. Real uvicorn servers whose model runs wait on a gate, the
waiting line itself, the clients and the folder tool."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.batch import main as segment_folder
from service.admission import Admission, UploadBudget
from service.batch_forming import BatchForming
from service.batch_line import QueuedImage, WaitingLine
from service.client import AsyncSegmentClient, SegmentClient
from service.client_wire import segment_params
from service.codec import Codec
from service.core.crf import CrfPool
from service.core.handoff import WorkerThreads
from service.core.pipeline import SegmentOptions
from service.core.priorities import Priority
from service.errors import ApiError
from service.metrics import Metrics
from service.settings import Settings
from service.state import ServiceState
from testkit import rawhttp
from testkit.rawhttp import http_request
from tests.clients.conftest import write_photos
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import png_bytes, rule_pipeline


def flat(value: int) -> bytes:
    """A PNG of one grey level: its model input says which request a run was for (its median)."""
    return png_bytes(np.full((80, 100, 3), value, np.uint8))


def test_the_line_takes_interactive_images_first_and_each_priority_in_arrival_order() -> None:
    async def order() -> list[str]:
        line = WaitingLine(8)
        loop = asyncio.get_running_loop()
        images = {name: QueuedImage(np.zeros(1), loop.create_future(), name, priority)
                  for name, priority in (("b1", "bulk"), ("b2", "bulk"), ("i1", "interactive"), ("b3", "bulk"),
                                         ("i2", "interactive"), ("i3", "interactive"))}
        for image in images.values():
            line.put(image)
        assert line.discard(images["i2"]) and line.discard(images["b2"])  # out of the heap, wherever they stand
        assert not line.discard(images["b2"])
        first = [line.next_waiting() for _ in range(3)]
        assert first[-1] is images["b1"]
        line.hold(first[-1:])  # a split batch's leftover, first in line unless an interactive image comes
        line.put(QueuedImage(np.zeros(1), loop.create_future(), "i4", "interactive"))
        rest = [line.next_waiting() for _ in range(3)]
        assert line.next_waiting() is None
        return [image.request_id for image in (*first, *rest) if image is not None]

    assert asyncio.run(order()) == ["i1", "i3", "b1", "i4", "b1", "b3"]


def posted(client: httpx.AsyncClient, value: int, priority: str) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.post("/segment", content=flat(value),
                                             params={"output": "stats", "priority": priority}))


def test_an_interactive_request_overtakes_a_bulk_backlog(rule_model: Path) -> None:
    order: list[int] = []
    gated = GatedServer(rule_model, on_run=lambda images: order.extend(int(np.median(i)) for i in images),
                        max_batch_size=1, concurrent_batches=1, max_queue=8, max_wait_ms=0)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60) as client:
            # One held, a bulk backlog behind it, then an interactive request.
            sent = ((10, "bulk"), (20, "bulk"), (30, "bulk"), (40, "bulk"), (50, "interactive"))
            return await gated.queued_in_order([partial(posted, client, value, priority) for value, priority in sent])

    with gated.running():
        order.clear()  # warm-up's runs
        responses = asyncio.run(run())
        waits = {p: gated.metric("segment_queue_wait_seconds_count", priority=p) for p in ("interactive", "bulk")}
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert order == [10, 50, 20, 30, 40]  # the interactive one ran as soon as the device was free
    assert waits == {"interactive": 1, "bulk": 4}


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_bulk_requests_fill_only_their_share_and_interactive_ones_are_still_taken(rule_model: Path,
                                                                                  share: float) -> None:
    # A queue of 4: with half for bulk, one bulk request running and two queued fill the bulk share.
    gated = GatedServer(rule_model, max_batch_size=1, concurrent_batches=1, max_queue=4, max_wait_ms=0,
                        bulk_queue_share=share)

    async def run() -> tuple[list[httpx.Response], httpx.Response | None, httpx.Response | None, httpx.Response]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60) as client:
            gated.gate.clear()
            tasks = [posted(client, 10, "bulk")]
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            for depth in (1, 2):
                tasks.append(posted(client, 10 + depth, "bulk"))
                await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", depth)
            beyond = posted(client, 13, "bulk")
            if share == 1.0:  # nothing kept for interactive requests: queued like them
                tasks.append(beyond)
                await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", 3)
                bulk_beyond = ready = None
            else:  # answered while the gate is still shut
                bulk_beyond = await asyncio.wait_for(beyond, 10)
                ready = await client.get("/readyz")
            depth = 3 if share == 1.0 else 2
            while depth < 4:  # interactive requests take the places kept for them, up to the full queue
                tasks.append(posted(client, 20 + depth, "interactive"))
                depth += 1
                await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", depth)
            interactive_beyond = await posted(client, 30, "interactive")
            gated.gate.set()
            return list(await asyncio.gather(*tasks)), bulk_beyond, ready, interactive_beyond

    with gated.running():
        accepted, bulk_beyond, ready, interactive_beyond = asyncio.run(run())
        refused = {r: gated.metric("segment_rejected_total", reason=r) for r in ("bulk_overloaded", "overloaded")}
    assert [r.status_code for r in accepted] == [200] * 5, [r.text for r in accepted]
    assert interactive_beyond.status_code == 503 and interactive_beyond.json()["error"]["code"] == "overloaded"
    if share == 1.0:
        assert refused == {"bulk_overloaded": 0, "overloaded": 1}
        return
    assert bulk_beyond is not None and ready is not None
    assert bulk_beyond.status_code == 503, bulk_beyond.text
    assert bulk_beyond.json()["error"]["code"] == "bulk_overloaded" and int(bulk_beyond.headers["retry-after"]) >= 1
    assert "interactive" in bulk_beyond.json()["error"]["message"]
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text  # bulk shedding is no overload
    assert refused == {"bulk_overloaded": 1, "overloaded": 1}


def test_an_unknown_priority_is_422(rule_model: Path) -> None:
    gated = GatedServer(rule_model)
    with gated.running(), gated.live.client() as client:
        r = client.post("/segment", content=flat(5), params={"priority": "urgent"})
        document = client.get("/openapi.json").json()
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    parameter = next(p for p in document["paths"]["/segment"]["post"]["parameters"] if p["name"] == "priority")
    assert parameter["schema"]["enum"] == ["interactive", "bulk"] and parameter["schema"]["default"] == "interactive"
    assert "bulk_overloaded" in document["paths"]["/segment"]["post"]["responses"]["503"]["description"]


def test_the_clients_and_the_folder_tool_send_the_priority(rule_model: Path, tmp_path: Path) -> None:
    gated = GatedServer(rule_model)
    url = gated.live.url

    def waited() -> dict[str, float]:
        return {p: gated.metric("segment_queue_wait_seconds_count", priority=p) for p in ("interactive", "bulk")}

    async def async_calls() -> None:
        async with AsyncSegmentClient(url, priority="bulk") as client:
            await client.segment(flat(1), "stats")
            await client.segment(flat(1), "stats", priority="interactive")

    with gated.running():
        with SegmentClient(url) as client:
            client.segment(flat(1), "stats")  # the server's default
            client.segment(flat(1), "stats", priority="bulk")
        with SegmentClient(url, priority="bulk") as client:
            client.segment(flat(1), "stats")
        assert waited() == {"interactive": 1, "bulk": 2}
        asyncio.run(async_calls())
        assert waited() == {"interactive": 2, "bulk": 3}
        write_photos(tmp_path / "in")  # three files, sent as bulk work unless told otherwise
        assert segment_folder([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--output", "stats",
                               "--server", url, "--no-progress"]) == 0
        assert waited() == {"interactive": 2, "bulk": 6}
        assert segment_folder([str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--output", "stats",
                               "--server", url, "--no-progress", "--priority", "interactive"]) == 0
        assert waited() == {"interactive": 5, "bulk": 6}
    with pytest.raises(ValueError, match="priority"):
        segment_params("stats", None, None, None, None, priority="urgent")


def test_bulk_requests_take_only_their_share_of_the_places_in_progress(tmp_path: Path) -> None:
    """Requests past the queue (running, encoding) hold places in progress too: a bulk backlog there (heavy
    outputs) must leave the rest of them to interactive requests, as it leaves them the rest of the queue."""
    settings = Settings(model_path=tmp_path / "unused.onnx", max_queue=4, max_batch_size=1, bulk_queue_share=0.5)
    state = ServiceState(settings, Metrics(), cache=None, pool=None, uploads=None, renders=None,  # type: ignore[arg-type]
                         render_pool=None, heavy_pool=None, loop_lag=None)  # type: ignore[arg-type]
    assert (state.max_admitted, state.bulk_max_admitted) == (9, 7)  # the two places kept in the queue, kept here
    state.admitted = 7  # seven requests past the queue, the queue empty
    with pytest.raises(ApiError) as refused, Admission(state, UploadBudget(1 << 20), None, bulk=True) as bulk:
        bulk.admit(100)
    assert (refused.value.status, refused.value.code) == (503, "bulk_overloaded")
    with Admission(state, UploadBudget(1 << 20), None) as interactive:
        interactive.admit(100)
        assert state.admitted == 8
    state.admitted = 6
    with Admission(state, UploadBudget(1 << 20), None, bulk=True) as bulk:
        bulk.admit(100)
        assert state.admitted == 7


def test_a_split_batch_runs_the_interactive_image_that_came_while_it_filled() -> None:
    """A batch waits for images being decoded; an interactive one arrives last, and the plan runs one image now
    (a preferred size): that one is the interactive image, and the bulk ones are held back, still in order."""
    async def run_order() -> tuple[list[list[str]], list[str]]:
        loop = asyncio.get_running_loop()
        line, incoming = WaitingLine(16), [3]

        def image(name: str, priority: Priority) -> QueuedImage:
            return QueuedImage(np.zeros(1), loop.create_future(), name, priority)

        forming = BatchForming(line, max_batch_size=8, max_wait_s=5.0, concurrency=1, in_flight=lambda: 0,
                               incoming=lambda: incoming[0], take=lambda count: 1, busy=None, metrics=None)
        line.put(image("b1", "bulk"))

        async def arrive() -> None:  # requests finishing their decode while the batch waits for them
            for name, priority in (("b2", "bulk"), ("b3", "bulk"), ("i1", "interactive")):
                await asyncio.sleep(0.01)
                line.put(image(name, priority))
                incoming[0] -= 1

        arriving = asyncio.create_task(arrive())
        batches = [[item.request_id or "" for item in await forming.next_batch()] for _ in range(4)]
        await arriving
        other = WaitingLine(4)  # two splits in a row: held images stay in the line's order
        other.hold([image("i9", "interactive")])
        other.hold([image("b9", "bulk")])
        return batches, [item.request_id or "" for item in other.held]

    batches, held = asyncio.run(run_order())
    assert batches == [["i1"], ["b1"], ["b2"], ["b3"]]
    assert held == ["i9", "b9"]


def test_bulk_requests_take_only_their_share_of_the_request_memory(tmp_path: Path) -> None:
    """Bulk overlays of large photos must not spend the memory interactive requests need (which would refuse them
    and make /readyz unready): bulk requests share half of the budget, one that alone needs more is 413, and one
    that finds the whole budget taken is `bulk_overloaded`, which leaves /readyz ready."""
    settings = Settings(model_path=tmp_path / "unused.onnx", request_memory_bytes=1000 * 1024, bulk_queue_share=0.5)
    state = ServiceState(settings, Metrics(), cache=None, pool=None, uploads=None, renders=None,  # type: ignore[arg-type]
                         render_pool=None, heavy_pool=None, loop_lag=None)  # type: ignore[arg-type]
    uploads = UploadBudget(1 << 30)

    def refused(upload_bytes: int) -> tuple[int, str]:
        with pytest.raises(ApiError) as raised, Admission(state, uploads, None, bulk=True) as bulk:
            bulk.admit(upload_bytes)
        return raised.value.status, raised.value.code

    with Admission(state, uploads, None, bulk=True) as first:
        first.admit(300 * 1024)
        assert first.hold is not None
        first.hold.reserve(150 * 1024)  # its decode: 450 of the 500 KiB bulk share
        assert refused(100 * 1024) == (503, "bulk_overloaded")
        assert refused(600 * 1024) == (413, "image_too_large")  # alone more than the share: no retry would fit
        with Admission(state, uploads, None) as interactive:
            interactive.admit(540 * 1024)  # the rest is still there for interactive requests
            assert state.memory.in_use == 990 * 1024
            assert refused(20 * 1024) == (503, "bulk_overloaded")  # within the bulk share, past the whole budget
            assert not state.memory.spent  # a bulk refusal is no overload
    assert state.memory.in_use == state.memory.bulk.held == 0  # every share given back


def test_a_queue_of_one_still_keeps_its_place_for_interactive_requests(rule_model: Path) -> None:
    gated = GatedServer(rule_model, max_batch_size=1, concurrent_batches=1, max_queue=1, max_wait_ms=0)

    async def run() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60) as client:
            gated.gate.clear()
            tasks = [posted(client, 10, "bulk")]  # the device is free: a bulk request runs
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            refused = await asyncio.wait_for(posted(client, 20, "bulk"), 10)  # the one place is kept
            tasks.append(posted(client, 30, "interactive"))
            await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", 1)
            gated.gate.set()
            return refused, list(await asyncio.gather(*tasks))

    with gated.running():
        refused, accepted = asyncio.run(run())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "bulk_overloaded", refused.text
    assert [r.status_code for r in accepted] == [200, 200]


def test_bulk_uploads_take_only_their_share_of_the_upload_buffer(rule_model: Path) -> None:
    """A bulk upload that has sent 40 000 of its bytes and stalls holds them in the 100 000-byte upload buffer; a
    second bulk upload that cannot fit in the bulk half is refused 503 `bulk_overloaded` before it is read, one
    larger than the whole half 413, while an interactive one of 40 000 bytes more is served, and /readyz stays
    ready."""
    gated = GatedServer(rule_model, upload_buffer_bytes=100_000, body_timeout_s=10, bulk_queue_share=0.5)
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (120, 120, 3), np.uint8))
    assert 40_000 < len(noise) < 60_000
    with gated.running():
        filler = rawhttp.connect(gated.live.url)
        try:
            filler.sendall(http_request("POST /segment?priority=bulk HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                                        "Content-Length: 40001", b"\0" * 40_000))
            time.sleep(0.5)  # its bytes have been read
            url = f"{gated.live.url}/segment"
            bulk = httpx.post(url, params={"priority": "bulk", "output": "stats"}, content=noise[:15_000], timeout=10)
            too_large = httpx.post(url, params={"priority": "bulk"}, content=b"\0" * 60_000, timeout=10)
            interactive = httpx.post(url, params={"output": "stats"}, content=noise, timeout=10)
            ready = httpx.get(f"{gated.live.url}/readyz", timeout=10)
        finally:
            filler.close()
    assert bulk.status_code == 503 and bulk.json()["error"]["code"] == "bulk_overloaded", bulk.text
    assert "upload buffer" in bulk.json()["error"]["message"]
    # Larger than the whole bulk share: no retry would fit (sent as interactive, it would).
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "payload_too_large", too_large.text
    assert interactive.status_code == 200, interactive.text
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text


def test_bulk_refinements_take_only_their_share_of_the_crf_places(tmp_path: Path) -> None:
    """`crf=true` requests take a place in the CRF pool when admitted: bulk ones only within their share (one of
    the two places of one process), so an interactive refinement is still taken."""
    pool = CrfPool(1, bulk_share=0.5)
    threads = WorkerThreads(1, "codec")
    codec = Codec(rule_pipeline(tmp_path), threads, crf=pool)
    options = SegmentOptions(crf=True)

    def refused(bulk: bool) -> tuple[int, str]:
        with pytest.raises(ApiError) as raised:
            codec.reserve_crf(options, bulk=bulk)
        return raised.value.status, raised.value.code

    try:
        first = codec.reserve_crf(options, bulk=True)
        assert first is not None
        assert refused(bulk=True) == (503, "bulk_overloaded")
        interactive = codec.reserve_crf(options)
        assert interactive is not None
        assert refused(bulk=False) == (503, "overloaded")  # every place taken
        first.release()
        again = codec.reserve_crf(options, bulk=True)  # the bulk share given back with the place
        assert again is not None
        again.release()
        interactive.release()
    finally:
        threads.shutdown()
        pool.close()
    assert (pool.bulk_places, CrfPool(1, bulk_share=1.0).bulk_places, CrfPool(4, bulk_share=0.1).bulk_places) == \
        (1, 2, 1)


@pytest.mark.parametrize(("buckets", "expected"), [
    (None, [["i1"], ["b1", "b2", "b3", "b4"]]),  # every row costs: interactive images run alone
    ((1, 2, 4, 8), [["i1", "i2", "i3", "b1"], ["b2", "b3", "b4"]]),  # bulk fills only the bucket's padding
])
def test_bulk_images_ride_with_interactive_ones_only_in_padding_rows(buckets: tuple[int, ...] | None,
                                                                     expected: list[list[str]]) -> None:
    def padded(count: int) -> int:
        return count if buckets is None else next(size for size in buckets if size >= count)

    async def batches() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        line = WaitingLine(16)
        names = ["b1", "b2", "b3", "b4"] + (["i1"] if buckets is None else ["i1", "i2", "i3"])
        for name in names:
            line.put(QueuedImage(np.zeros(1), loop.create_future(), name,
                                 "bulk" if name.startswith("b") else "interactive"))
        forming = BatchForming(line, max_batch_size=8, max_wait_s=0.0, concurrency=1, in_flight=lambda: 0,
                               incoming=lambda: 0, take=lambda count: count, busy=None, metrics=None,
                               padded_size=padded)
        cut = []
        while line.depth:  # every batch the line gives (a batch past the end would wait for an image forever)
            cut.append([item.request_id or "" for item in await asyncio.wait_for(forming.next_batch(), 5)])
        return cut

    assert asyncio.run(batches()) == expected


@pytest.mark.parametrize("buckets", [None, "1,2,4,8"])
def test_an_interactive_request_never_waits_for_bulk_work_in_its_own_batch(rule_model: Path,
                                                                          buckets: str | None) -> None:
    """Three bulk images and then three interactive ones wait behind a running batch. Without buckets (every row
    costs) the interactive ones run alone; with buckets their batch of 4 takes one bulk image into its padding."""
    shapes = {} if buckets is None else {"fixed_shapes": "on", "batch_buckets": buckets}
    gated = GatedServer(rule_model, max_batch_size=8, concurrent_batches=1, max_queue=16, max_wait_ms=0, **shapes)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60) as client:
            sent = ((10, "bulk"), (20, "bulk"), (30, "bulk"), (40, "bulk"), (50, "interactive"), (60, "interactive"),
                    (70, "interactive"))
            return await gated.queued_in_order([partial(posted, client, value, priority) for value, priority in sent])

    with gated.running():
        responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 7, [r.text for r in responses]
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert sizes[0] == 1
    if buckets is None:
        assert sizes[1:] == [3, 3, 3, 3, 3, 3]
    else:
        bulk = sorted(sizes[1:4])  # one in the interactive batch; the two others as the plan says (2, or 1 + 1)
        assert sizes[4:] == [4, 4, 4] and bulk[2] == 4 and bulk[1] <= 2, sizes
