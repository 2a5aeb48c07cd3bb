"""SIGTTOU where slots pick no device (the CPU provider, as on this host): a worker left on a slot past the new
count serves on where it is. It was moved down like a worker on a GPU (a replacement started on the lower slot,
loading the model, then the worker stopped): one model load and one worker's warm-up for nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from service import workers as workers_module
from service.settings import Settings
from service.workers import slots_pick_devices
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import OPTIONS, census, segment_ok, serve_until, wait_for, worker_pids
from tests.service.worker_helpers import supervisor_command

SEEN_S = 1.2  # past the supervisor's next round (every 0.5 s), which sees a new worker ready


def slot_of(server: ServerProcess, pid: int) -> int:
    """Worker `pid`'s slot, from its /readyz (asked on new connections until it answers one)."""
    for _ in range(60):
        r = httpx.get(f"{server.url}/readyz", timeout=10)
        if r.status_code == 200 and r.json()["pid"] == pid:
            return r.json()["worker_slot"]
    raise AssertionError(f"worker {pid} never answered /readyz\n{server.log}")


def test_on_cpu_a_worker_left_past_the_count_by_sigttou_serves_on_without_a_model_load(rule_model: Path) -> None:
    body = png_bytes(scene(120, 80))
    # A slot whose worker crashed soon after it was ready waits 30 s for its next one: long enough that SIGTTOU
    # certainly finds it waiting, and removes it rather than the worker that serves.
    command = supervisor_command("import service.worker_backoff as b; b.RETRY_FIRST_S = 30.0")
    with ServerProcess(rule_model, command=command, log_level="info", **OPTIONS) as server:
        pids = set(server.wait_ready(120).worker_pids)
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        slots = {pid: slot_of(server, pid) for pid in pids}
        assert sorted(slots.values()) == [0, 1], slots
        (low,) = [pid for pid, slot in slots.items() if slot == 0]
        (survivor,) = pids - {low}
        time.sleep(SEEN_S)
        os.kill(low, signal.SIGKILL)  # slot 0 now waits for its next worker
        serve_until(server, body, expected, lambda c: c["retrying"] == 1, "slot 0 not waiting", timeout=30)
        started = server.log.count("Started server process")  # one per worker process, model load and all
        server.proc.send_signal(signal.SIGTTOU)
        # Slot 0 goes; the survivor, on slot 1, is past the count of 1.
        wait_for(lambda: "past the 1 workers kept" in server.log, "SIGTTOU not handled", server, timeout=60)
        assert census(server) == {**census(server), "configured": 1, "live": 1, "retrying": 0}
        segment_ok(server, body, expected)
        assert worker_pids(server) == {survivor}, server.log  # no replacement started, none stopped
        assert slot_of(server, survivor) == 1
        assert server.log.count("Started server process") == started, server.log  # no model loaded again
        assert "replaces worker" not in server.log and "stays on slot" not in server.log, server.log
        # The slot it left free is the next worker's: SIGTTIN starts one there, beside it.
        server.proc.send_signal(signal.SIGTTIN)
        wait_for(lambda: len(worker_pids(server)) == 2, "no worker added", server)
        (added,) = worker_pids(server) - {survivor}
        assert slot_of(server, added) == 0 and slot_of(server, survivor) == 1
        assert census(server) == {**census(server), "configured": 2, "live": 2, "retrying": 0}
        assert server.terminate() == 0, server.log


def test_slots_pick_devices_only_where_several_devices_run_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert not slots_pick_devices(Settings())  # this host's onnxruntime has no CUDA provider: the CPU runs
    monkeypatch.setattr(workers_module, "_cuda_available", lambda providers: True)
    assert slots_pick_devices(Settings())
    assert not slots_pick_devices(Settings(cuda_devices="1"))  # one GPU: every slot runs on it
    assert not slots_pick_devices(Settings(cuda_options="device_id=1"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert not slots_pick_devices(Settings())
