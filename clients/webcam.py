"""`segment-webcam`: live segmentation of a camera or a video file through the service, or in this process.

    segment-webcam 0 --server http://localhost:8000                 # camera 0, in a window
    segment-webcam clip.mp4 --server URL --out seg.mp4 --inflight 4  # headless, to a video file
    segment-webcam 0 --local model.onnx                             # onnxruntime here, no server

A window needs an OpenCV build with a GUI (`opencv-python`); the serve extra installs the headless build, with
which only `--out` works.

Frames are JPEG-encoded and sent over one `SegmentClient` (kept-alive connections) with up to `--inflight`
requests at once, so throughput is set by the server's batching rather than by one round trip per frame. Results
are consumed oldest-first, so the output keeps the frame order. The server returns class ids (`labels`, a small
palette PNG) and the overlay is blended here with the service's own `blend_overlay`, on the original frame.

Before the first frame it waits up to `--wait` seconds for the server to be ready (one starting up answers 503 until
its model is warm). A frame that fails is counted and passed on unsegmented. When the server goes away (a refused or
broken connection, or 503: a restart, a redeploy, a saturated server) nothing is sent until `/readyz` is 200 again
(`clients.webcam_outage`): a camera or a stream goes on meanwhile, its frames passed through unsegmented; a video
file pauses, as nothing is lost by that. After `--wait` seconds without a frame segmented the run stops with exit 2,
as it does after `--max-failures` frames in a row failed for their own sake (any other error). Ctrl-C, the way a
headless camera run ends, closes the video file properly, prints the summary and exits 130 at once: the answers
still on their way are not waited for.

This module is the loop and the command line; the video in and out is `clients.webcam_video`, the numbers and the
HUD are `clients.webcam_hud`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import numpy as np

from clients.batch import INTERRUPTED, serve_extra_missing
from clients.ctrl_c import first_ctrl_c_only
from clients.webcam_outage import Outage, in_thread, server_away
from service.client import SegmentClient, SegmentClientError, SegmentResult, SegmentTlsError
from service.core.errors import DecodeError

try:  # OpenCV and the service's renderers come with the serve extra; main() says so on a client-only install
    import cv2

    from clients.webcam_hud import Stats, draw_hud
    from clients.webcam_video import NO_GUI, Sink, has_gui, is_recording, open_capture
    from service.core.outputs.masks import blend_overlay
except ModuleNotFoundError as exc:
    _MISSING: ModuleNotFoundError | None = exc
else:
    _MISSING = None



class Segmenter(Protocol):
    """What the loop needs: `SegmentClient` (--server) and `service.local.LocalSegmenter` (--local) both are."""

    def segment(self, data: bytes, output: str = "labels") -> SegmentResult: ...


def local_classes(segmenter: object) -> dict:
    """The `GET /classes` answer for an in-process model: names and colours from its metadata."""
    meta = segmenter.engine.metadata  # type: ignore[attr-defined]
    return {"classes": [{"id": i, "name": name, "color": list(meta.palette[i])}
                        for i, name in enumerate(meta.classes)]}


def open_segmenter(args: argparse.Namespace) -> contextlib.AbstractContextManager[tuple[Segmenter, dict]]:
    """The client for --server, or an onnxruntime session in this process for --local, with the class colours."""
    if args.local is not None:
        from service.local import LocalSegmenter  # onnxruntime: only in --local mode

        try:
            segmenter = LocalSegmenter(args.local, providers=args.providers, threads=args.threads)
        except Exception as exc:  # missing file, not the ONNX contract, unknown provider: nothing can run
            raise SystemExit(f"segment-webcam: cannot load {args.local}: {exc}") from exc
        return contextlib.nullcontext((segmenter, local_classes(segmenter)))

    @contextlib.contextmanager
    def remote() -> Iterator[tuple[Segmenter, dict]]:
        with SegmentClient(args.server, api_key=args.api_key, max_connections=args.inflight, retries=1) as client:
            # A server still warming up refuses every frame (503 not_ready): the first seconds of video would
            # go out unsegmented.
            client.wait_ready(timeout=args.wait)
            yield client, client.classes()

    return remote()


def bgr_palette(classes: dict) -> list[tuple[int, int, int]]:
    """The model's class colours in OpenCV's BGR order (frames stay BGR end to end)."""
    palette = [(0, 0, 0)] * (max((c["id"] for c in classes["classes"]), default=0) + 1)
    for entry in classes["classes"]:
        r, g, b = entry["color"]
        palette[entry["id"]] = (b, g, r)
    return palette


def _request(client: Segmenter, jpeg: bytes) -> tuple[np.ndarray, float]:
    """Runs in a worker thread: labels for one frame, and the round-trip time."""
    start = time.perf_counter()
    labels = client.segment(jpeg, "labels").array()
    return labels, time.perf_counter() - start


def run(args: argparse.Namespace) -> Stats:
    """The capture → request → blend → show/write loop; returns the final numbers."""
    show = args.show or args.out is None
    if show and not has_gui():  # before opening the camera or the model: fail at once, with the way out
        raise SystemExit(NO_GUI)
    capture = open_capture(args.source)
    recording = is_recording(capture, args.source)
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    sink = Sink(args.out, show, fps if 1 <= fps <= 240 else 25.0, args.fourcc)
    stats = Stats()
    pending: deque[tuple[np.ndarray, Future[tuple[np.ndarray, float]] | None]] = deque()  # None: not sent
    encode = [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality]
    with open_segmenter(args) as (client, classes):
        wait_ready = getattr(client, "wait_ready", None)  # None with --local: no server to wait for
        outage = Outage(wait_ready, args.wait) if wait_ready is not None else None
        palette = bgr_palette(classes)
        exhausted = False
        try:
            while not sink.quit:
                if outage is not None and outage.active:
                    try:  # a video file waits with nothing in flight; a camera goes on meanwhile
                        if outage.ended(block=recording and not pending and not exhausted):
                            print(f"segment-webcam: the server is ready again after "
                                  f"{time.monotonic() - outage.since:.1f}s "
                                  f"({outage.passed} frames passed through unsegmented meanwhile)", file=sys.stderr)
                    except SegmentClientError as exc:
                        stats.stopped = str(exc)
                        break
                sending = outage is None or not outage.active
                # Keep the pipeline full: up to `inflight` frames on the wire at once.
                while not exhausted and len(pending) < args.inflight and (sending or not recording):
                    if args.max_frames and stats.frames + len(pending) >= args.max_frames:
                        exhausted = True
                        break
                    ok, frame = capture.read()
                    if not ok:
                        exhausted = True
                        break
                    future = None
                    if sending:
                        ok, jpeg = cv2.imencode(".jpg", frame, encode)
                        if not ok:
                            raise RuntimeError("JPEG encoding failed")
                        future = in_thread(_request, client, jpeg.tobytes(), daemon=args.local is None)
                    pending.append((frame, future))
                if not pending:
                    if exhausted:
                        break
                    continue  # a video file paused until the server is back
                frame, future = pending.popleft()  # oldest first: output order = capture order
                shown, latency = frame, 0.0  # a frame that failed, or was not sent, goes out plain
                if future is None:
                    stats.errors += 1
                    outage.passed += 1  # type: ignore[union-attr]  # only an outage leaves frames unsent
                else:
                    try:
                        labels, latency = future.result()
                        shown = blend_overlay(frame, labels, palette, args.alpha)
                        stats.failing = 0
                        if outage is not None:
                            outage.segmented = True
                    except (SegmentClientError, DecodeError) as exc:  # one frame lost: keep going
                        stats.errors += 1
                        _failed(exc, stats, outage, recording)
                stats.tick(latency)
                if not args.no_hud:
                    away = outage is not None and outage.active
                    draw_hud(shown, stats, len(pending),
                             f"server away {time.monotonic() - outage.since:.0f}s" if away else "")  # type: ignore[union-attr]
                sink.put(shown)
                if stats.stopped:  # no TLS connection can be made: see `_failed`
                    break
                if args.max_failures and stats.failing >= args.max_failures:  # every frame refused, not one
                    stats.stopped = f"stopped after {stats.failing} frames failed in a row"
                    break
        except KeyboardInterrupt:  # how a headless camera run ends: the frames written so far make the video
            stats.interrupted = True
        finally:
            for _, future in pending:  # their answers would be thrown away: nothing waits for them
                if future is not None:
                    future.cancel()
            capture.release()
            sink.close()
    return stats


def _failed(exc: Exception, stats: Stats, outage: Outage | None, recording: bool) -> None:
    """Count and tell a frame's failure: the first of an outage starts it, any other counts towards
    --max-failures; a server certificate that is not accepted, or a server that does not speak TLS, stops the run
    (no wait would mend it)."""
    if isinstance(exc, SegmentTlsError):
        stats.stopped = str(exc)
    elif outage is None or not server_away(exc):
        stats.failing += 1
        print(f"segment-webcam: frame {stats.frames}: {exc}", file=sys.stderr)
    elif not outage.active:  # the frames already in flight fail with it, untold
        outage.begin()
        print(f"segment-webcam: frame {stats.frames}: {exc}; waiting up to {outage.wait:g}s for the server to be "
              "ready again, " + ("the video paused" if recording else "passing frames through unsegmented"),
              file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segment-webcam",
                                     description="Segment a camera or video file live through the service "
                                                 "(--server) or in this process (--local).")
    parser.add_argument("source", nargs="?", default="0", help="camera index (default 0) or video file path")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", default=os.environ.get("SEGMENT_URL", "http://127.0.0.1:8000"),
                       help="service base URL (default $SEGMENT_URL or http://127.0.0.1:8000)")
    where.add_argument("--local", metavar="MODEL", type=Path,
                       help="ONNX model to run in this process with onnxruntime instead of a server")
    parser.add_argument("--providers", default="auto", help="--local: onnxruntime providers (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="--local: onnxruntime intra-op threads")
    parser.add_argument("--api-key", default=os.environ.get("SEGMENT_API_KEY"), help="X-API-Key")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="--server: seconds to wait for it to be ready, before the first frame and again when "
                             "it goes away (refused connections, 503); then exit 2 (default 30)")
    parser.add_argument("--inflight", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    parser.add_argument("--out", type=Path, help="write the result to this video file (headless)")
    parser.add_argument("--fourcc", help="codec for --out (default by extension: mp4v, MJPG for .avi, "
                                         "FFV1 for .mkv)")
    parser.add_argument("--show", action="store_true", help="also show a window when writing --out")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    parser.add_argument("--jpeg-quality", type=int, default=85, help="JPEG quality of the uploaded frames")
    parser.add_argument("--no-hud", action="store_true", help="no FPS/latency text on the frames")
    parser.add_argument("--max-failures", type=int, default=25,
                        help="stop after this many frames failed in a row for their own sake, not because the "
                             "server was away (see --wait) (default 25; 0: never stop)")
    args = parser.parse_args(argv)
    if args.inflight < 1:
        parser.error("--inflight must be at least 1")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error("--alpha must be within 0..1")
    if args.max_failures < 0:
        parser.error("--max-failures must be 0 or more")
    if args.wait < 0:
        parser.error("--wait must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segment-webcam`; 0 when every frame was segmented, 1 if some were not, 2 if it could not
    start or gave up (the server away longer than `--wait`, or `--max-failures`), 130 on Ctrl-C. `argv` None: this
    process's command line, which ends with it (a Ctrl-C after the first stays ignored until the process is gone)."""
    args = parse_args(argv)
    if _MISSING is not None:
        print(serve_extra_missing("segment-webcam", "the webcam client", _MISSING), file=sys.stderr)
        return 2
    with first_ctrl_c_only(keep=argv is None):  # the first ends the run at once: later ones must not cut it short
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """`run`, its summary printed; the exit status (see `main`)."""
    try:
        stats = run(args)
    except SegmentClientError as exc:
        print(f"segment-webcam: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first frame (waiting for the server): nothing was written
        print("segment-webcam: interrupted", file=sys.stderr)
        return INTERRUPTED
    if stats.stopped:
        print(f"segment-webcam: {stats.stopped}", file=sys.stderr)
    print(f"segment-webcam: {stats.frames} frames, {stats.errors} errors, {stats.mean_fps:.1f} FPS on average"
          + ("; interrupted" if stats.interrupted else ""), file=sys.stderr)
    if stats.interrupted:
        return INTERRUPTED
    if stats.stopped:
        return 2
    return 1 if stats.errors else 0


if __name__ == "__main__":
    sys.exit(main())
