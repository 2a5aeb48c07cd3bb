"""The folder a server of several workers shares (metric files, results, slots; under /dev/shm where it has room)
goes with it however it stops: a supervisor killed with SIGKILL ran no cleanup and left its folder for ever, so
the next server that starts sweeps the folders nobody holds. Never one in use: a server running beside it keeps
its own, and the workers of a killed supervisor keep theirs while they are still there (they stop by themselves)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from testkit.server import ServerProcess
from tests.reliability.shutdown_helpers import wait_for_log
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import OPTIONS, segment_ok, wait_for, worker_pids


def shared_folder(pid: int) -> Path:
    """Where the supervisor put the shared files of worker `pid` (its environment says)."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return Path(dict(pair.split("=", 1) for pair in pairs if "=" in pair)["SEGMENT_WORKER_SLOTS_DIR"]).parent


def started(model: Path) -> tuple[ServerProcess, Path]:
    """A real two-worker server, ready, and its shared folder."""
    server = ServerProcess(model, **OPTIONS)
    try:
        return server, shared_folder(min(server.wait_ready(120).worker_pids))
    except BaseException:
        server.terminate()
        raise


def gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_the_folder_of_a_killed_server_is_swept_at_the_next_start_and_never_one_in_use(rule_model: Path) -> None:
    body = png_bytes(scene(120, 80))
    beside, beside_folder = started(rule_model)  # a server running all along: its folder must stay
    with beside:
        expected = httpx.post(f"{beside.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        killed, folder = started(rule_model)
        orphans = worker_pids(killed)
        assert folder != beside_folder and (folder / "results").is_dir()
        # Its workers would stop by themselves once it is gone (drained, then exit): paused first, they still hold
        # the folder while the next server starts, as workers still draining do.
        for pid in orphans:
            os.kill(pid, signal.SIGSTOP)
        os.kill(killed.pid, signal.SIGKILL)  # no cleanup runs
        killed.proc.wait(10)
        try:
            # Its workers are still there: the folder is in use.
            assert all(not gone(pid) for pid in orphans)
            third, third_folder = started(rule_model)
            with third:
                assert folder.is_dir() and beside_folder.is_dir(), third.log
        finally:
            for pid in orphans:
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: all(gone(pid) for pid in orphans), "the workers did not die", beside)
        assert folder.is_dir() and not third_folder.exists()  # nobody swept it yet; the third removed its own
        fourth, fourth_folder = started(rule_model)
        with fourth:
            assert not folder.exists(), fourth.log  # swept: nobody held it
            assert beside_folder.is_dir() and fourth_folder.is_dir()
            wait_for_log(fourth, f"removed {folder}")  # read from its output by a thread, which may lag
            segment_ok(fourth, body, expected)
        segment_ok(beside, body, expected)  # the server beside serves on, results and all
        again = httpx.post(f"{beside.url}/segment", params={"output": "labels"}, content=body,
                           headers={"content-type": "image/png"}, timeout=30)
        assert httpx.get(f"{beside.url}/results/{again.headers['X-Result-ID']}/labels.png",
                         timeout=10).status_code == 200
        assert beside.terminate() == 0, beside.log
    assert not beside_folder.exists() and not fourth_folder.exists()
