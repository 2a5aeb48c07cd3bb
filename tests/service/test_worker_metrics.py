"""The per-worker metrics (each worker slot's start time and event-loop lag) and the labelled counters a fresh
server shows at 0, on one process and on real `segment-serve` workers under the supervisor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from service.app import PROBE_PATHS
from service.metrics import INFERENCE_RUNS, REJECTION_REASONS
from service.settings import Settings
from testkit.metrics import samples
from testkit.server import ServerProcess
from tests.docs.error_code_helpers import codes_in_readme
from tests.service.svc_helpers import LiveServer

WORKERS = 2
STALL_S = 1.5


def by_worker(text: str, name: str, **labels: str) -> dict[str, float]:
    """worker slot -> value of the samples called `name` that carry `labels` too."""
    return {dict(found)["worker"]: value for found, value in samples(text, name).items()
            if all(dict(found).get(k) == v for k, v in labels.items())}


def assert_known_counters_at_zero(text: str) -> None:
    failures = samples(text, "segment_inference_failures_total")
    assert failures == {(("run", run),): 0.0 for run in ("batch", "image", "probe")}, failures
    rejected = samples(text, "segment_rejected_total")
    assert {dict(k)["reason"] for k in rejected} == set(REJECTION_REASONS), rejected
    assert set(rejected.values()) == {0.0}, rejected
    # Each API route's successes and 5xx too: the error-rate and shedding alerts see a route's first failure.
    requests = {(dict(k)["route"], dict(k)["status"]): v for k, v in samples(text, "segment_requests_total").items()
                if dict(k)["route"] not in PROBE_PATHS}
    api = ("/segment", "/results/{result_id}/{name}", "/classes", "/outputs")
    assert requests == {(route, str(status)): 0.0 for route in api for status in (200, 500, 503, 504)}, requests


def test_the_known_reasons_are_the_documented_error_codes() -> None:
    """What is created at 0 is every code the README documents, `client_closed` (a client gone mid-upload) and
    `send_timeout` (a client that stopped reading), answered to no one; the README's list is itself checked
    against the source (tests/docs/test_error_codes.py)."""
    assert set(REJECTION_REASONS) == set(codes_in_readme()) | {"client_closed", "send_timeout"}
    assert set(INFERENCE_RUNS) == {"batch", "image", "probe"}


def test_a_fresh_server_shows_its_slot_and_known_counters_at_zero(rule_model: Path) -> None:
    before = time.time()
    server = LiveServer(Settings(model_path=rule_model, host="127.0.0.1", port=0)).start()
    try:
        with server.client() as client:
            text = client.get("/metrics").text
    finally:
        server.stop()
    assert_known_counters_at_zero(text)
    (started,) = by_worker(text, "segment_worker_start_time_seconds").items()
    assert started[0] == "0" and before - 5 <= started[1] <= time.time()  # one process: slot 0
    assert list(by_worker(text, "segment_event_loop_lag_seconds_count")) == ["0"]


def slots_of(server: ServerProcess, pids: set[int], timeout: float = 30) -> dict[int, int]:
    """pid -> worker slot of the ready workers `pids`, from /readyz asked on new connections (any worker takes
    each)."""
    found: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while set(found) != pids:
        assert time.monotonic() < deadline, (found, pids)
        r = httpx.get(f"{server.url}/readyz", timeout=10)
        if r.status_code == 200 and r.json()["pid"] in pids:
            found[r.json()["pid"]] = r.json()["worker_slot"]
    return found


def late_ticks(text: str, worker: str, over_s: float) -> float:
    """How many of the worker's loop ticks ran more than `over_s` late."""
    count = by_worker(text, "segment_event_loop_lag_seconds_count")[worker]
    return count - by_worker(text, "segment_event_loop_lag_seconds_bucket", le=str(over_s))[worker]


def test_each_worker_slot_shows_its_own_start_time_and_loop_lag(rule_model: Path) -> None:
    """A stalled worker shows in its own slot's lag, not diluted by the others'; a worker killed and replaced by
    the supervisor shows as a newer start time in its slot, the other slot's unchanged."""
    with ServerProcess(rule_model, SEGMENT_WORKERS=str(WORKERS), SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2") as server:
        pids = set(server.wait_ready(90).worker_pids)
        first = server.metrics()
        assert_known_counters_at_zero(first)  # summed over the workers: still 0, every series there
        slots = slots_of(server, pids)
        assert sorted(slots.values()) == list(range(WORKERS))
        started = by_worker(first, "segment_worker_start_time_seconds")
        assert set(started) == {"0", "1"}, started

        victim = min(pids)
        slot = str(slots[victim])
        other = str(1 - slots[victim])
        os.kill(victim, signal.SIGSTOP)  # its event loop stalls, the other worker's runs on
        time.sleep(STALL_S)
        os.kill(victim, signal.SIGCONT)
        # The late tick is observed once the woken worker's loop runs again: scraped until it shows rather than
        # after a fixed sleep a busy machine could outrun; the deadline only matters when it never shows.
        deadline = time.monotonic() + 30
        while late_ticks(stalled := server.metrics(), slot, 1.0) < 1:
            assert time.monotonic() < deadline, stalled
            time.sleep(0.1)
        assert late_ticks(stalled, other, 1.0) == 0, stalled

        os.kill(victim, signal.SIGKILL)
        server.worker_pids.clear()  # now wait for the survivor and the replacement
        assert victim not in server.wait_ready(90).worker_pids
        after = by_worker(server.metrics(), "segment_worker_start_time_seconds")
        assert set(after) == {"0", "1"}, after  # the dead worker's value is not added as a third slot
        assert after[slot] > started[slot], (started, after)
        assert after[other] == started[other], (started, after)
        assert server.terminate() == 0
