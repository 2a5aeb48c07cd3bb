"""Several GPUs on one host: workers spread over the CUDA devices, one slot each, round robin; a replacement takes
the device of the worker it replaces; `SEGMENT_WORKERS=auto` starts one worker per device where the CUDA provider
is there. This host has no GPU, so the device count comes from CUDA_VISIBLE_DEVICES or a stand-in NVML, and the
workers run on the CPU provider: what is proven is which device each worker is given, not that CUDA uses it."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service import workers as workers_module
from service.core import nvml
from service.core.engine import load_engine
from service.core.sessions import CUDA
from service.settings import Settings
from service.worker_slots import SLOTS_DIR_VARIABLE, hold_slot, lowest_free
from service.workers import worker_count
from testkit.server import ServerProcess
from tests.service.nvml_helpers import fake_pynvml
from tests.service.svc_helpers import LiveServer
from tests.service.worker_helpers import worker_environ


def test_the_visible_devices_are_counted_as_cuda_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml()
    module.nvmlDeviceGetCount = lambda: 4
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml.visible_device_count() == 4  # NVML's count where nothing narrows it
    for visible, count in (("3,0", 2), ("GPU-a", 1), ("1,-1,2", 1), ("-1", 0), ("", 0), ("0, 1, 2", 3)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert nvml.visible_device_count() == count, visible
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no nvidia-ml-py: unknown
    assert nvml.visible_device_count() is None
    assert Settings().cuda_device_list() == [0]  # unknown: the first device, as before


def test_each_worker_slot_has_its_device_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    devices = [Settings(worker_slot=slot).cuda_device() for slot in range(5)]
    assert devices == [0, 1, 2, 0, 1]  # as this process numbers them: CUDA renumbers the visible ones
    explicit = [Settings(cuda_devices="2, 0", worker_slot=slot) for slot in range(3)]
    assert [s.cuda_device() for s in explicit] == [2, 0, 2]
    assert [s.engine_options().cuda_options["device_id"] for s in explicit] == ["2", "0", "2"]
    assert explicit[0].engine_options().device_id == 2  # what the engine runs on and reads NVML for
    assert Settings(cuda_devices="0,1,3").cuda_devices_in_use(2) == [0, 1]
    assert Settings(cuda_devices="0,1").cuda_devices_in_use(5) == [0, 1]
    named = Settings(cuda_devices="0,1", cuda_options="device_id=3", worker_slot=1)
    assert named.cuda_device() == 3 and named.cuda_device_list() == [3]  # a device_id names the one device
    assert Settings().engine_options().cuda_options == {"device_id": "0"}  # one process: the first device
    for bad in ("0,0", "one", "0,-1", ""):
        with pytest.raises(ValidationError, match="cuda_devices"):
            Settings(cuda_devices=bad)
    with pytest.raises(ValidationError, match="workers"):
        Settings(workers="many")


def test_auto_workers_are_one_per_device_where_cuda_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert Settings().workers == "auto"  # the default
    assert worker_count(Settings(workers=2)) == 2  # a number is a number
    assert worker_count(Settings()) == 1  # this host's onnxruntime has no CUDA provider
    asked: list[str] = []

    def cuda_here(providers: str) -> bool:
        asked.append(providers)
        return True

    monkeypatch.setattr(workers_module, "_cuda_available", cuda_here)
    assert worker_count(Settings()) == 3
    assert worker_count(Settings(cuda_devices="1,2")) == 2
    assert worker_count(Settings(cuda_options="device_id=1")) == 1  # one device named
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert worker_count(Settings()) == 1
    assert asked == ["auto", "auto"]  # onnxruntime asked only where several devices made it matter
    monkeypatch.undo()
    assert workers_module._cuda_available("cpu") is False  # not even imported for a CPU-only setting


def test_a_slot_is_held_for_life_and_freed_by_its_holders_death(tmp_path: Path) -> None:
    held = hold_slot(tmp_path, 1)
    with pytest.raises(RuntimeError, match="slot 1 is held"):  # never one slot twice: a startup failure
        hold_slot(tmp_path, 1)
    hold_slot(tmp_path, 0).close()  # another slot is another lock
    held.close()  # its holder went
    hold_slot(tmp_path, 1).close()
    assert [lowest_free(h) for h in ([], [0, 1], [1, 2], [0, 2, 3])] == [0, 2, 0, 1]  # what the supervisor hands out
    # Another process holds slot 0 until it is killed; the kernel then drops its lock.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from service.worker_slots import hold_slot; "
        f"handle = hold_slot(Path({str(tmp_path)!r}), 0); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="slot 0 is held"):
            hold_slot(tmp_path, 0)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    hold_slot(tmp_path, 0).close()


def _slots(server: ServerProcess, want: int, timeout: float = 60) -> dict[int, int]:
    """{pid: worker_slot} of the ready workers, asked on new connections until `want` answered."""
    found: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(found) < want:
        assert time.monotonic() < deadline and server.proc.poll() is None, (found, server.log)
        r = httpx.get(f"{server.url}/readyz", timeout=5)
        if r.status_code == 200:
            found[r.json()["pid"]] = r.json()["worker_slot"]
        time.sleep(0.05)
    return found


def test_workers_take_distinct_slots_and_a_replacement_takes_the_dead_ones(rule_model: Path) -> None:
    with ServerProcess(rule_model, SEGMENT_WORKERS="2", SEGMENT_CUDA_DEVICES="0,1", SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2", log_level="info") as server:
        first = _slots(server.wait_ready(90), 2)
        assert sorted(first.values()) == [0, 1], first
        assert "worker slot 0: CUDA device 0" in server.log and "worker slot 1: CUDA device 1" in server.log
        victim = next(pid for pid, slot in first.items() if slot == 1)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while server.log.count("worker slot 1: CUDA device 1") < 2:  # the replacement, on the same device
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log
            time.sleep(0.2)
        now = _slots(server, 2)  # the survivor and the replacement: a dead worker answers nothing
        assert sorted(now.values()) == [0, 1] and victim not in now, now
        assert server.log.count("worker slot 0: CUDA device 0") == 1  # the survivor kept its slot
        assert server.terminate() == 0


def test_a_restart_of_all_workers_keeps_their_slots_and_clears_their_live_gauges(rule_model: Path) -> None:
    """SIGHUP (uvicorn's restart of every worker): each replacement takes the slot, so the device, of the worker it
    replaces, and the old workers' live-gauge files go (or their last values would be summed on)."""
    with ServerProcess(rule_model, SEGMENT_WORKERS="2", SEGMENT_CUDA_DEVICES="0,1", SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2", log_level="info") as server:
        first = _slots(server.wait_ready(90), 2)
        metrics = Path(worker_environ(min(first))["PROMETHEUS_MULTIPROC_DIR"])

        def live_gauges(pids: Iterable[int]) -> list[str]:
            return sorted(p.name for p in metrics.glob("gauge_live*") for pid in pids if p.stem.endswith(f"_{pid}"))

        assert live_gauges(first), sorted(p.name for p in metrics.iterdir())  # what there is to clear
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while set(now := _slots(server, 2)) & set(first):  # until only replacements answer
            assert time.monotonic() < deadline, (now, server.log)
            time.sleep(0.2)
        assert sorted(now.values()) == [0, 1], now
        assert "slots are held" not in server.log
        assert live_gauges(first) == [] and live_gauges(now)
        assert server.terminate() == 0


def test_a_worker_reads_every_device_in_use_and_takes_its_share_of_the_cpus(monkeypatch: pytest.MonkeyPatch,
                                                                           rule_model: Path) -> None:
    """Any worker may answer a scrape for all of them, so each reads the GPU gauges of every device in use; its
    codec pool is its share of the host's CPUs, as /readyz reports."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())  # devices 0 and 3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("service.settings.available_cpus", lambda: 8)
    settings = Settings(model_path=rule_model, host="127.0.0.1", port=0, providers="cpu", intra_op_threads=1,
                        workers=2, cuda_devices="3,0", worker_slot=0)
    # As if it ran on CUDA (this host has none): the provider decides whether there are GPU gauges at all.
    engine = dataclasses.replace(load_engine(settings.engine_options()), provider=CUDA)
    server = LiveServer(settings, engine=engine).start()
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        assert ready["worker_slot"] == 0 and ready["cuda_device"] == 3
        assert ready["codec_threads"] == 4  # its half of the host's 8 CPUs
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        used = [line for line in text.splitlines() if line.startswith("segment_gpu_memory_used_bytes")]
        assert sorted(used) == ['segment_gpu_memory_used_bytes{gpu="0"} 1000.0',
                                'segment_gpu_memory_used_bytes{gpu="3"} 3000.0'], used
    finally:
        server.stop()


def test_workers_on_one_gpu_warm_up_one_at_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   rule_model: Path) -> None:
    """A worker whose device another worker is warming up waits for its turn before building and warming its own
    sessions (their memory readings are device-wide)."""
    monkeypatch.setenv(SLOTS_DIR_VARIABLE, str(tmp_path))  # as the supervisor sets it for its workers
    settings = Settings(model_path=rule_model, host="127.0.0.1", port=0, providers="cpu", intra_op_threads=1,
                        workers=2, cuda_devices="3,0", worker_slot=0)
    engine = dataclasses.replace(load_engine(settings.engine_options()), provider=CUDA)  # as if on CUDA device 3
    with open(tmp_path / "device-3.warm-up", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # the other worker on device 3, warming up
        server = LiveServer(settings, engine=engine).start(wait_ready=False)
        try:
            time.sleep(1.0)  # the rule model warms up in milliseconds once its turn comes
            waiting = httpx.get(f"{server.url}/readyz", timeout=10)
            assert waiting.status_code == 503 and waiting.json()["ready"] is False, waiting.text
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
        try:
            deadline = time.monotonic() + 20
            while httpx.get(f"{server.url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "never warmed up after its turn came"
                time.sleep(0.05)
        finally:
            server.stop()
