"""For the tests of a failing or hung device (`testkit.failing_device`, driven by a flag file): mending the device
whatever happens, and waiting for a probe path to answer a status."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


@contextlib.contextmanager
def mended(flag: Path) -> Iterator[None]:
    """Whatever happens in the block, the device works again after it (a hung run would hold up the shutdown)."""
    try:
        yield
    finally:
        flag.unlink(missing_ok=True)


def wait_for(client: httpx.Client, path: str, status: int, within_s: float) -> httpx.Response:
    """GET `path` until it answers `status` (failing the test after `within_s`); that answer."""
    deadline = time.monotonic() + within_s
    while (r := client.get(path)).status_code != status:
        assert time.monotonic() < deadline, (path, r.status_code, r.text)
        time.sleep(0.05)
    return r
