"""Fixtures for the client tests: one real server per module, and real images on disk."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from testkit.photos import photo
from tests.service.svc_helpers import held_server, running_server

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def server_url(tiny_onnx_model: Path) -> Iterator[str]:
    """A real uvicorn server with the tiny model, no API key."""
    with running_server(tiny_onnx_model) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server_url(tiny_onnx_model: Path) -> Iterator[str]:
    """A real uvicorn server that requires `API_KEY`."""
    with running_server(tiny_onnx_model, api_keys=[API_KEY]) as url:
        yield url


def write_photos(folder: Path) -> list[Path]:
    """Three real photographs in three formats (one in a subfolder), small enough to be quick."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    paths = [folder / "astronaut.png", folder / "coffee.jpg", folder / "sub" / "chelsea.webp"]
    Image.fromarray(photo("astronaut.png", (96, 80))).save(paths[0])
    Image.fromarray(photo("coffee.png", (120, 72))).save(paths[1], quality=90)
    Image.fromarray(photo("chelsea.png", (64, 90))).save(paths[2], lossless=True)
    return paths


@pytest.fixture
def astronaut() -> np.ndarray:
    return photo("astronaut.png", (96, 80))


@contextlib.contextmanager
def warming_server(model_path: Path, **settings: object) -> Iterator[tuple[str, threading.Event]]:
    """A real server whose warm-up waits for the returned event (a model still loading onto a device): until it is
    set, `/readyz` is 503 and `/segment` answers 503 `not_ready` with Retry-After, as a server starting up does."""
    server, release = held_server(Settings(model_path=model_path, host="127.0.0.1", port=0, intra_op_threads=1,
                                           worker_threads=2, **settings))
    try:
        yield server.url, release
    finally:
        release.set()
        server.stop()
