"""A replacement worker killed during its startup (by the kernel's out-of-memory killer, or a crash in a device
library: a signal, not uvicorn's startup failure) fails at startup like one that exits 3: it is tried again with
a growing delay, counted and reported, rather than restarted every half second, for ever, unreported; and a server
none of whose workers can start stops with exit status 3.

The kill is real: a `sitecustomize` module on the workers' path SIGKILLs each worker process spawned while a flag
file exists, before it loads anything (the supervisor itself and its resource tracker are not spawned workers)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx

from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import census, serve_until

KILLER = """\
import os, signal
from pathlib import Path

_flag = os.environ.get("REVIEW_KILL_WORKERS_FLAG")
if _flag and os.path.exists(_flag) and b"spawn_main" in Path("/proc/self/cmdline").read_bytes():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killer_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The flag file (absent yet), and the environment that makes a worker spawned while it exists die."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILLER)
    flag = tmp_path / "kill-workers"
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return flag, {"PYTHONPATH": path, "REVIEW_KILL_WORKERS_FLAG": str(flag), "SEGMENT_WORKERS": "2",
                  "SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_WORKER_THREADS": "1"}


def test_a_replacement_killed_at_startup_is_retried_with_backoff_and_reported(rule_model: Path,
                                                                              tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(rule_model, model)
    body = png_bytes(scene(120, 80))
    flag, env = killer_env(tmp_path)
    with ServerProcess(model, log_level="info", **env) as server:
        first = server.wait_ready(120).worker_pids
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        flag.touch()
        time.sleep(1.5)  # the supervisor has seen the victim ready: its death is a crash, not a startup failure
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        seen = serve_until(server, body, expected, lambda c: c["start_failures"] >= 2, "not reported", timeout=20)
        assert any(c["live"] == 1 and c["retrying"] == 1 for c in seen), seen
        assert "killed by SIGKILL" in seen[-1]["last_start_failure"], seen[-1]
        time.sleep(max(0.0, 6.0 - (time.monotonic() - killed_at)))
        # The first replacement 1 s after the victim's death (it died soon after it was ready), then tries 2 s, 4 s
        # apart: at most five deaths in 6 s, the victim's included, where a try every round (0.5 s) made ten or more.
        deaths = len(re.findall(r"Child process \[\d+\] died|failed at startup \(killed", server.log))
        assert 3 <= deaths <= 5, server.log
        assert f"Child process [{victim}] died\n" in server.log, server.log
        flag.unlink()
        serve_until(server, body, expected, lambda c: "started after" in server.log, "no recovery", timeout=30)
        assert census(server)["live"] == 2
        assert server.terminate() == 0, server.log


def test_a_server_whose_every_worker_is_killed_at_startup_stops_with_status_3(rule_model: Path,
                                                                             tmp_path: Path) -> None:
    flag, env = killer_env(tmp_path)
    flag.touch()
    with ServerProcess(rule_model, log_level="info", **env) as server:
        assert server.proc.wait(30) == 3, server.log  # it started worker after worker, for ever
        server._reader.join(5)
    assert "no worker is left running" in server.log and "killed by SIGKILL" in server.log, server.log
