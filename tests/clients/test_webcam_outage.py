"""`segment-webcam` while the server goes away: a real `segment-serve` process stopped (SIGTERM) and started again on
the same port, as a restart or a redeploy does, under a real `segment-webcam` process.

A video file waits for the server and is segmented to its end; a live stream (MJPEG over HTTP, as an IP camera
serves it) goes on meanwhile, its frames passed through unsegmented; a server away longer than `--wait` ends the
run (exit 2), after that time rather than after a number of frames. Before: every frame was sent and failed while
the server was down, and after `--max-failures` (25) of them in a row, a second or so, the run stopped with exit 2.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from clients.webcam import bgr_palette
from service.client import SegmentClient
from service.core.outputs.masks import blend_overlay
from testkit.metrics import metric_sum
from testkit.server import ServerProcess
from tests.clients.cli_process import CliProcess
from tests.clients.webcam_helpers import _read_all

WIDTH, HEIGHT = 96, 72


def frame_at(i: int) -> np.ndarray:
    """Moving shapes on a textured background (the other webcam tests' clip, any length)."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    frame = np.dstack([(xx * 2 + i * 5) % 256, (yy * 3) % 256, np.full_like(xx, 90)]).astype(np.uint8)
    cv2.circle(frame, (10 + 3 * (i % 30), 36), 14, (0, 0, 255), -1)
    cv2.rectangle(frame, (70 - 2 * (i % 30), 5), (90 - 2 * (i % 30), 25), (255, 0, 0), -1)
    return frame


def write_clip(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(frame_at(i))
    writer.release()
    return path


class Webcam(CliProcess):
    """`segment-webcam` in its own process (this checkout's module), its stderr read line by line."""

    def __init__(self, *args: str) -> None:
        super().__init__("clients.webcam", *args)

    def summary(self) -> tuple[int, int]:
        """(frames, errors) of the summary line."""
        (found,) = re.findall(r"segment-webcam: (\d+) frames, (\d+) errors", self.err)
        return int(found[0]), int(found[1])


def served_frames(url: str) -> float:
    return metric_sum(httpx.get(f"{url}/metrics", timeout=10).text, "segment_requests_total", route="/segment")


def wait_served(url: str, count: int, run: Webcam, within_s: float = 60) -> None:
    """Until the server has answered `count` frames of `run`."""
    deadline = time.monotonic() + within_s
    while served_frames(url) < count:
        assert run.proc.poll() is None and time.monotonic() < deadline, run.err
        time.sleep(0.05)


def restarted(first: ServerProcess, model: Path) -> ServerProcess:
    """The same server started again on `first`'s port (once that has let go of it), until ready."""
    port = first.url.rsplit(":", 1)[1]
    second = ServerProcess(model, SEGMENT_INTRA_OP_THREADS="1", SEGMENT_PORT=port)
    second.url = first.url
    return second.wait_ready()


def plain_frames(got: list[np.ndarray], sent: list[np.ndarray]) -> list[int]:
    """The output frames that went out as they came in: unsegmented."""
    return [i for i, (g, s) in enumerate(zip(got, sent, strict=True)) if np.array_equal(g, s)]


def overlay(url: str, frame: np.ndarray) -> np.ndarray:
    """What the run writes for `frame` once segmented."""
    with SegmentClient(url) as client:
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        return blend_overlay(frame, client.segment(jpeg.tobytes(), "labels").array(), bgr_palette(client.classes()),
                             0.5)


@pytest.fixture
def server(tiny_onnx_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_onnx_model, SEGMENT_INTRA_OP_THREADS="1") as first:
        yield first.wait_ready()


def test_a_video_file_waits_out_a_server_restart_and_is_segmented_to_its_end(
        server: ServerProcess, tiny_onnx_model: Path, tmp_path: Path) -> None:
    total = 240
    clip, out = write_clip(tmp_path / "clip.avi", total), tmp_path / "seg.mkv"
    run = Webcam(str(clip), "--server", server.url, "--out", str(out), "--no-hud", "--inflight", "2",
                 "--wait", "60")
    second = None
    try:
        wait_served(server.url, 20, run)
        server.terminate()
        time.sleep(4)  # the server down for a while: ~30 frames sent meanwhile would have failed before
        assert run.proc.poll() is None, run.err
        assert "waiting up to 60s for the server to be ready again, the video paused" in run.err
        second = restarted(server, tiny_onnx_model)
        assert run.wait(120) == 1, run.err  # some frames were lost in the restart
        frames, errors = run.summary()
        assert frames == total and "ready again after" in run.err, run.err
        inputs, outputs = _read_all(clip), _read_all(out)
        assert len(outputs) == total
        plain = plain_frames(outputs, inputs)
        # Only the frames on the wire when the server went away (two at a time): the rest waited for it.
        assert len(plain) == errors and 1 <= errors <= 4, (plain, run.err)
        assert plain[-1] < total - 100, plain  # and the video went on, segmented, after the restart
        np.testing.assert_array_equal(outputs[-1], overlay(second.url, inputs[-1]))
    finally:
        run.kill()
        if second is not None:
            second.terminate()


def test_a_server_away_longer_than_wait_ends_the_run_after_that_time(server: ServerProcess, tmp_path: Path) -> None:
    clip, out = write_clip(tmp_path / "clip.avi", 240), tmp_path / "seg.mkv"
    run = Webcam(str(clip), "--server", server.url, "--out", str(out), "--no-hud", "--inflight", "2",
                 "--wait", "3")
    try:
        wait_served(server.url, 20, run)
        server.terminate()
        stopped = time.monotonic()
        assert run.wait(60) == 2, run.err
        took = time.monotonic() - stopped
    finally:
        run.kill()
    assert 3 <= took < 15, (took, run.err)  # the outage's time, not a number of frames
    assert "the server was not ready again within 3s (--wait)" in run.err
    frames, errors = run.summary()
    assert len(_read_all(out)) == frames and 20 <= frames < 240 and errors <= 4  # a video file, closed properly


class MjpegStream:
    """An MJPEG stream over HTTP (multipart/x-mixed-replace, what IP cameras serve), `fps` frames a second, whether
    read or not; `jpegs` are the frames sent."""

    def __init__(self, frames: int, fps: float) -> None:
        self.jpegs = [cv2.imencode(".jpg", frame_at(i), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                      for i in range(frames)]
        jpegs = self.jpegs

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                start = time.monotonic()
                for i, jpeg in enumerate(jpegs):
                    time.sleep(max(0.0, start + i / fps - time.monotonic()))
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
                    self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def decoded(self, folder: Path) -> list[np.ndarray]:
        """The frames as the capture decodes them (FFmpeg's decoder, not libjpeg's): what a plain frame holds."""
        raw = folder / "stream.mjpeg"
        raw.write_bytes(b"".join(self.jpegs))
        return _read_all(raw)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_live_stream_goes_on_unsegmented_while_the_server_restarts(server: ServerProcess, tiny_onnx_model: Path,
                                                                     tmp_path: Path) -> None:
    total, fps = 600, 40.0
    stream = MjpegStream(total, fps)
    out = tmp_path / "seg.mkv"
    run = Webcam(stream.url, "--server", server.url, "--out", str(out), "--no-hud", "--inflight", "2",
                 "--wait", "60")
    second = None
    try:
        wait_served(server.url, 20, run)
        server.terminate()
        time.sleep(2)
        assert run.proc.poll() is None, run.err
        second = restarted(server, tiny_onnx_model)
        assert run.wait(60) == 1, run.err
    finally:
        run.kill()
        stream.close()
        if second is not None:
            second.terminate()
    assert "passing frames through unsegmented" in run.err
    passed = int(re.search(r"ready again after [\d.]+s \((\d+) frames passed through", run.err).group(1))
    frames, errors = run.summary()
    outputs = _read_all(out)
    assert frames == len(outputs) == total  # every frame of the stream read and written, none held back
    plain = plain_frames(outputs, stream.decoded(tmp_path))
    assert len(plain) == errors and passed <= errors <= passed + 4, (plain, run.err)
    assert passed >= 2 * fps  # the two seconds down and the restart's: frames came and went out meanwhile
    assert plain[0] > 0 and plain[-1] < total - 1  # segmented before the outage and after it


class ReadyButRefusing:
    """A stand-in server whose `/readyz` says ready and whose `/segment` refuses every frame 503 `overloaded` (a
    proxy's or a budget's refusal that readiness does not see)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, status: int, body: dict, *headers: tuple[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.startswith("/readyz"):
                    self.answer(200, {"ready": True, "status": "ok"})
                else:
                    self.answer(200, {"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.answer(503, {"error": {"code": "overloaded", "message": "busy"}}, ("Retry-After", "1"))

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_server_ready_but_refusing_every_frame_ends_the_run_after_wait(tmp_path: Path) -> None:
    """`--wait` counts from the last frame segmented, not from the last time `/readyz` said ready: else a server
    that says so and refuses every frame would hold the run forever."""
    server = ReadyButRefusing()
    clip, out = write_clip(tmp_path / "clip.avi", 240), tmp_path / "seg.mkv"
    started = time.monotonic()
    run = Webcam(str(clip), "--server", server.url, "--out", str(out), "--no-hud", "--inflight", "2", "--wait", "4")
    try:
        code = run.wait(60)
        took = time.monotonic() - started
    finally:
        run.kill()
        server.close()
    assert code == 2, run.err
    assert "no frame segmented for 4s (--wait), although the server said it was ready" in run.err
    assert 4 <= took < 20, (took, run.err)
    frames, errors = run.summary()
    assert frames == errors and len(_read_all(out)) == frames
