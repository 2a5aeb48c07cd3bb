"""The service going away while the page waits for it (real Chromium, a real `segment-serve` process killed with
SIGKILL while it holds the upload): the page says the service could not be reached and that trying again may
work, not a bare "Failed to fetch"."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model


def test_a_server_killed_mid_request_is_reported_as_unreachable(browser_page: object, tmp_path: Path,
                                                                 picture: Path) -> None:
    page = browser_page
    with ServerProcess(make_rule_model(tmp_path / "rule.onnx")) as server:
        server.wait_ready()
        page.goto(server.url + "/")
        page.wait_for_selector("#downloads[data-state=ready] a")
        # Stopped first, so that the upload surely reaches a server that never answers it (the kernel still
        # takes the connection and the bytes), then killed as an OOM killer or a node failure would.
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with page.expect_request(lambda r: "output=stats" in r.url):
                page.set_input_files("#file", str(picture))
        finally:
            os.kill(server.pid, signal.SIGKILL)
        page.wait_for_selector("#stage:not([data-state=busy])", timeout=30_000)
    status = page.text_content("#status")
    assert "could not be reached" in status and "try again" in status, status
    assert "error" in page.get_attribute("#status", "class").split()
    assert page.get_attribute("#stage", "data-state") == "error"  # the picture stays, without a mask
