"""Fixtures for the download tests: a real HTTP server on a loopback port, and a port nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.weights.http_server import serve


@pytest.fixture()
def served_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(directory, base URL) of a real HTTP server serving that (initially empty) directory."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as base:
        yield root, base


@pytest.fixture()
def closed_port_url() -> str:
    """A loopback URL on which nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
