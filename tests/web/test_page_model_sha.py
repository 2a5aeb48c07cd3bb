"""A tab left open while the service's model file is replaced in place (real Chromium; a real `segment-serve`
process, its model file swapped for one of the same name and the same class names with other colours, then
restarted in place by SIGHUP): the next upload's legend shows the new colours, which the mask is drawn in. Only the
answer's `model_sha256` tells the two files apart; a stand-in in front of the server adds it to the stats answers
of a server that does not send it yet, and passes on those of one that does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
from onnx import helper

from service.core.contract import ModelMetadata
from testkit.http_stub import QuietHandler, serving
from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model
from tests.web.test_page_model_change import _expected, _legend, _upload

# Not forwarded: the connection's own, and what httpx has already undone (it hands over the body decoded, whole).
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
                          "host"})

CLASSES = ["background", "red thing", "green thing", "blue thing"]
# One set of class names in two palettes: a re-export that only recoloured the classes (class 0 included: the
# mask's transparent background).
BEFORE = ModelMetadata(classes=CLASSES, palette=[[0, 0, 0], [200, 40, 40], [40, 200, 40], [40, 40, 200]],
                       input_size=96, arch="rule", source="tests: hand-written graph")
AFTER = ModelMetadata(classes=CLASSES, palette=[[5, 5, 5], [250, 128, 114], [46, 139, 87], [65, 105, 225]],
                      input_size=96, arch="rule", source="tests: hand-written graph")


def _model(path: Path, meta: ModelMetadata) -> Path:
    """The rule graph (classes 0-3 by dominant colour) carrying `meta`, put at `path` at once, as a deploy that
    renames a finished file into place does."""
    part = path.with_name(path.name + ".new")
    model = onnx.load(str(make_rule_model(part)))
    del model.metadata_props[:]
    helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(part))
    os.replace(part, path)
    return path


class _NamingProxy(QuietHandler):
    """Forwards every request to `backend`, a real server, and hands its answers back; a stats answer that does not
    name its model file (a server from before answers did) gets the `model_sha256` and `X-Model-SHA256` the
    server's `/classes` tells at that moment, as a server that names them sends."""

    backend: str  # set per proxy

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        with httpx.Client(base_url=self.backend, timeout=60) as http:
            answer = http.request(self.command, self.path, content=body, headers=headers)
            content, named = answer.content, dict(answer.headers)
            if "output=stats" in self.path and answer.is_success and "model_sha256" not in answer.json():
                sha256 = http.get("/classes").json()["sha256"]
                content = json.dumps({**answer.json(), "model_sha256": sha256}).encode()
                named.setdefault("x-model-sha256", sha256)
        self.send_response(answer.status_code)
        for key, value in named.items():
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = _forward


@contextlib.contextmanager
def _named(backend: str) -> Iterator[str]:
    """The URL of a `_NamingProxy` in front of `backend`."""
    with serving(type("Bound", (_NamingProxy,), {"backend": backend})) as url:
        yield url


def _serving_another_file(server: ServerProcess, sha256: str, timeout: float = 120) -> str:
    """Wait until the server, restarted in place, answers `/classes` for another model file than `sha256`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log
        try:
            now = httpx.get(f"{server.url}/classes", timeout=5).json()["sha256"]
            if now != sha256:
                return now
        except (httpx.TransportError, ValueError, KeyError):  # restarting: connections refused meanwhile
            pass
        time.sleep(0.1)
    raise AssertionError(f"still the old model after {timeout} s:\n{server.log}")


def test_a_file_swapped_under_the_same_name_recolours_the_legend(browser_page: object, tmp_path: Path,
                                                                 picture: Path) -> None:
    """Before: the page compared only the answer's model name and class names with /classes, both unchanged, so
    the legend kept the old colours while the mask came in the new ones."""
    page, path = browser_page, _model(tmp_path / "model.onnx", BEFORE)
    with ServerProcess(path) as server, _named(server.url) as url:
        server.wait_ready()
        page.goto(url + "/")  # type: ignore[attr-defined]
        page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
        _upload(page, picture)
        before = _expected(url, picture, BEFORE)
        assert len(before) > 2 and _legend(page) == before
        old_sha = httpx.get(f"{url}/classes", timeout=5).json()["sha256"]
        _model(path, AFTER)
        server.proc.send_signal(signal.SIGHUP)  # restarts in place and loads the file anew
        new_sha = _serving_another_file(server, old_sha)
        server.wait_ready()
        answer = httpx.post(f"{url}/segment?output=stats", content=picture.read_bytes(),
                            headers={"Content-Type": "image/png"}, timeout=30)
        # What the page goes by: the same name and class names as before, another file.
        assert answer.json()["model"] == "model" and answer.json()["model_sha256"] == new_sha
        assert answer.headers["X-Model-SHA256"] == new_sha
        _upload(page, picture)
        after = _expected(url, picture, AFTER)
        assert [name for name, _ in after] == [name for name, _ in before] and after != before
        assert _legend(page) == after
        assert page.text_content("#model") == "model model · rule · fp32 · 4 classes"  # type: ignore[attr-defined]
