"""Every live worker on its own slot below the count (slot k runs on CUDA device k mod the devices), also after
SIGTTOU removes a slot that is not the highest: the worker left past the count moves to the freed slot. It stayed
there, so that with two GPUs two workers shared one device while the other had none, until the next SIGHUP.

This host has no GPU: the supervisor is told the CUDA provider is there (`CUDA_SLOTS`), so that two devices make its
slots pick devices, and the slot each worker holds is read from its `/readyz` (`worker_slot`)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx

from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import OPTIONS, census, serve_until, wait_for, worker_pids
from tests.service.worker_helpers import CUDA_SLOTS, segment, worker_environ


def slots(server: ServerProcess) -> dict[int, int]:
    """{pid: slot} of the live workers, each asked on new connections until all of them answered /readyz."""
    live, found = worker_pids(server), {}
    for _ in range(60):
        r = httpx.get(f"{server.url}/readyz", timeout=10)
        if r.status_code == 200:
            found[r.json()["pid"]] = r.json()["worker_slot"]
        if set(found) >= live:
            break
    return {pid: slot for pid, slot in found.items() if pid in live}


def test_after_sigttou_removes_a_lower_slot_the_live_workers_hold_the_slots_below_the_count(rule_model: Path,
                                                                                             tmp_path: Path) -> None:
    model, away = tmp_path / "model.onnx", tmp_path / "away.onnx"
    shutil.copy(rule_model, model)
    body = png_bytes(scene(120, 80))
    with ServerProcess(model, command=CUDA_SLOTS, log_level="info", SEGMENT_CUDA_DEVICES="0,1", **OPTIONS) as server:
        server.wait_ready(120)
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        server.proc.send_signal(signal.SIGTTIN)  # a third worker: slots 0, 1, 2
        wait_for(lambda: len(held := slots(server)) == 3 and sorted(held.values()) == [0, 1, 2],
                 "no third worker on slot 2", server)
        # The worker on slot 1 dies while its replacements cannot start: slot 1 waits for its next try.
        (middle,) = [pid for pid, slot in slots(server).items() if slot == 1]
        model.rename(away)
        os.kill(middle, signal.SIGKILL)
        serve_until(server, body, expected, lambda c: c["start_failures"] >= 1, "no failed start", timeout=60)
        results = Path(worker_environ(min(worker_pids(server)))["SEGMENT_RESULTS_DIR"])
        for _ in range(200):  # new connections until the worker on slot 2, which will move, stored a result
            if (results / "slot-2").is_dir():
                break
            segment(server.url, body)
        assert (results / "slot-2").is_dir(), server.log
        away.rename(model)  # the next start would succeed, but SIGTTOU comes first: slot 1 goes
        server.proc.send_signal(signal.SIGTTOU)

        def settled() -> bool:
            held = slots(server)
            return census(server)["configured"] == 2 and len(held) == 2 == len(worker_pids(server))

        wait_for(settled, "SIGTTOU not handled", server)
        wait_for(lambda: sorted(slots(server).values()) == [0, 1], f"two workers, slots {slots(server)}", server,
                 timeout=30)
        assert "worker slot 1: CUDA device 1" in server.log.split("SIGTTOU")[-1], server.log  # the one moved
        assert census(server)["live"] == 2
        # The slots no worker holds any more leave no results behind (the moved worker's did not come along).
        assert {folder.name for folder in results.iterdir()} <= {"slot-0", "slot-1"}
        serve_until(server, body, expected, lambda c: True, "not serving")
        # A replacement takes the slot of the worker it replaces, below the count.
        victim = max(slots(server).items(), key=lambda item: item[1])[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in (now := slots(server)) and sorted(now.values()) == [0, 1],
                 "not replaced on its slot", server)
        assert server.terminate() == 0, server.log
