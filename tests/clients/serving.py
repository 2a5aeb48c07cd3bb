"""A real uvicorn server on a loopback port, in a background thread, for client tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "service" / "models" / "default.onnx"


@contextlib.contextmanager
def running_server(model_path: Path, **settings: object) -> Iterator[str]:
    """Serve `model_path` on 127.0.0.1:<free port> until the block ends; yields the base URL once ready."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(Settings(model_path=model_path, intra_op_threads=2, worker_threads=2, **settings))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server for {model_path} did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
