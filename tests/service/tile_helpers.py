"""What a tiled answer must equal: the whole letterboxed canvas at the same size, run in one piece. The rule model
labels each pixel by its colour alone, so tiling is invisible to it, and any difference is the tiling's."""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import httpx
import numpy as np
from PIL import Image

from service.core.engine import Engine
from service.core.letterbox import letterbox, unletterbox
from service.core.output_kinds import RenderOptions
from service.core.outputs.labelmap import LabelMap
from service.core.outputs.render import render
from testkit.metrics import metric_sum
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import png_bytes, scene

Resolution = int | str | None


def canvas_side(engine: Engine, height: int, width: int, resolution: Resolution) -> int:
    """The letterbox side the service should segment at, worked out here from the documented rule: the model's
    input size, or the resolution (`native`: the long side) where that is larger."""
    if resolution is None:
        return engine.input_size
    asked = max(height, width) if resolution == "native" else int(resolution)
    return max(engine.input_size, asked)


def one_piece_label_map(engine: Engine, image: np.ndarray, resolution: Resolution) -> LabelMap:
    """The labels of `image` letterboxed to its canvas and run whole (one model input of the canvas's side)."""
    side = canvas_side(engine, *image.shape[:2], resolution)
    tensor, info = letterbox(image, side, engine.metadata.pad_rgb)
    return LabelMap.from_model(engine.run_images([tensor])[0], info)


def one_piece_labels(engine: Engine, image: np.ndarray, resolution: Resolution) -> np.ndarray:
    """`one_piece_label_map` as a plain array at the image's size (`unletterbox`)."""
    side = canvas_side(engine, *image.shape[:2], resolution)
    tensor, info = letterbox(image, side, engine.metadata.pad_rgb)
    return unletterbox(engine.run_images([tensor])[0], info)


def one_piece_body(engine: Engine, image: np.ndarray, resolution: Resolution, output: str,
                   options: RenderOptions | None = None) -> object:
    """The body of `output` (a dict for JSON kinds) rendered from the one-piece labels."""
    body, _ = render(output, image, one_piece_label_map(engine, image, resolution), engine.metadata,
                     options or RenderOptions())
    return body


def png_labels(data: bytes) -> np.ndarray:
    """A labels PNG's class ids (its palette indices), as an array."""
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode in ("P", "L"), (img.format, img.mode)
    return np.asarray(img)


def decoded(data: bytes) -> np.ndarray:
    """Any image body's pixels, as RGB."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def expected_tiles(length: int, tile: int) -> int:
    """How many tiles an axis of `length` needs: one when it fits, else enough for a stride of at most 2/3 tile."""
    return 1 if length <= tile else math.ceil((length - tile) / math.floor(tile * 2 / 3)) + 1


def thin_lines(width: int, height: int) -> np.ndarray:
    """A dark image with 1-px lines of a dim red and green (bright enough for their class at full size, averaged
    into the background by a downscale of 3 or more), and a few bright blocks that survive any scale."""
    img = np.full((height, width, 3), 20, np.uint8)
    img[:, width // 2 + 1] = (120, 20, 20)  # vertical red line
    img[height // 3, :] = (20, 120, 20)  # horizontal green line
    img[: height // 4, : width // 4] = (30, 30, 220)
    img[-height // 5 :, -width // 5 :] = (230, 40, 40)
    return img


def post(url: str, image: np.ndarray | bytes, **params: object) -> httpx.Response:
    """`POST /segment` of an image (sent as PNG) or of upload bytes; labels unless `output` says otherwise."""
    body = image if isinstance(image, bytes) else png_bytes(image)
    return httpx.post(f"{url}/segment", params={"output": "labels", **params}, content=body, timeout=30)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples, scraped from the server's `/metrics`."""
    return metric_sum(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def wait_until(probe: Callable[[], float], want: float, within_s: float = 10) -> None:
    """Wait until `probe()` reads `want`."""
    deadline = time.monotonic() + within_s
    while (now := probe()) != want:
        assert time.monotonic() < deadline, f"{now}, not {want}"
        time.sleep(0.02)


def error_code(r: httpx.Response) -> str:
    """The `error.code` of a refusal."""
    return r.json()["error"]["code"]


def posted(url: str, image: np.ndarray, **params: object) -> Future[httpx.Response]:
    """A request sent from a thread; its answer."""
    answer: Future[httpx.Response] = Future()
    threading.Thread(target=lambda: answer.set_result(post(url, image, **params)), daemon=True).start()
    return answer


def hold_one_run(gated: GatedServer) -> Future[httpx.Response]:
    """Close the gate and start an untiled request, whose run holds the only inference slot; its answer, once the
    gate opens."""
    gated.gate.clear()
    holder = posted(gated.live.url, scene(150, 100))
    gated.wait_metric("segment_batches_in_flight", 1)
    return holder


def released(gated: GatedServer, answers: list[Future[httpx.Response]], before: int, images: int) -> None:
    """Open the gate: the held run and the requests still waiting finish, and exactly `images` more images run
    than `before` (none of a refused request's tiles)."""
    gated.gate.set()
    for answer in answers:
        assert answer.result(30).status_code == 200
    time.sleep(0.3)  # a tile left in the line would be taken now
    assert sum(gated.runs) == before + images, gated.runs[-8:]
