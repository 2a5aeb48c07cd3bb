"""Hostile clients on raw sockets, and the latency a tiny request sees while they run.

Each attack is an async function `attack(host, port, stop)` that keeps attacking until `stop` is set; `run_attack`
runs one in a child process (so the attacker's CPU and GIL are not the prober's) while `probe` times tiny
requests. Used by bench/hostile_bench.py (long) and tests/reliability/test_hostile_clients.py (short).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import numpy as np

Attack = Callable[[str, int, asyncio.Event], Awaitable[None]]


def split_url(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def http_request(head: str, body: bytes = b"") -> bytes:
    """A request in bytes; `head` is the request line and headers without the final blank line."""
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def read_response(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `timeout`), and how long that took."""
    sock.settimeout(timeout)
    t0 = time.perf_counter()
    out = b""
    with contextlib.suppress(OSError):  # a reset after the answer still leaves the answer
        while chunk := sock.recv(65536):
            out += chunk
    return out, time.perf_counter() - t0


def status_of(raw: bytes) -> int:
    """The status code of a raw HTTP/1.1 response (0 when there is none)."""
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


# -- attacks --------------------------------------------------------------------------------------------------

def stalled_uploads(connections: int, declared: int = 624, sent: int = 100) -> Attack:
    """`connections` uploads that declare `declared` bytes, send `sent` and go silent; reopened when closed."""

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        async def one() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(http_request(f"POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                                              f"Content-Length: {declared}", b"\0" * sent))
                    await _until_closed_or_stopped(reader, stop)
                    writer.close()
        await asyncio.gather(*(one() for _ in range(connections)))

    return attack


def partial_heads(connections: int) -> Attack:
    """`connections` requests cut off inside their headers; reopened when closed."""

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        async def one() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    await _until_closed_or_stopped(reader, stop)
                    writer.close()
        await asyncio.gather(*(one() for _ in range(connections)))

    return attack


def huge_headers(clients: int, header_bytes: int = 64 << 20) -> Attack:
    """`clients` loops each sending one header of `header_bytes` as fast as the server reads it."""

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        chunk = b"a" * (1 << 20)

        async def one() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(host, port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    for _ in range(header_bytes // len(chunk)):
                        if stop.is_set():
                            break
                        writer.write(chunk)
                        await writer.drain()
                    writer.write(b"\r\n\r\n")
                    await writer.drain()
                    writer.close()
                await asyncio.sleep(0.01)
        await asyncio.gather(*(one() for _ in range(clients)))

    return attack


def aborted_uploads(clients: int, declared: int = 200_000, sent: int = 50_000) -> Attack:
    """`clients` loops each sending part of an upload and hanging up."""

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        async def one() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(host, port)
                    writer.write(http_request(f"POST /segment HTTP/1.1\nHost: x\nContent-Type: image/jpeg\n"
                                              f"Content-Length: {declared}", b"\xff" * sent))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.close()
        await asyncio.gather(*(one() for _ in range(clients)))

    return attack


def refetches(clients: int, path: str) -> Attack:
    """`clients` loops each fetching `path` (e.g. a large result's overlay.png) again and again."""

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=120) as client:
            async def one() -> None:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        r = await client.get(path)
                        if r.status_code == 503:
                            await asyncio.sleep(0.05)  # a client that honours nothing but a short pause
            await asyncio.gather(*(one() for _ in range(clients)))

    return attack


def uploads(clients: int, body: bytes, content_type: str) -> Attack:
    """`clients` loops each posting `body` (a hostile image) to /segment, again as soon as it is answered."""

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=120) as client:
            async def one() -> None:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        r = await client.post("/segment", content=body, params={"output": "stats"},
                                              headers={"Content-Type": content_type})
                        if r.status_code == 503:
                            await asyncio.sleep(0.05)
            await asyncio.gather(*(one() for _ in range(clients)))

    return attack


async def _until_closed_or_stopped(reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
    reading = asyncio.ensure_future(reader.read())  # returns when the server closes
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    reading.cancel()
    stopping.cancel()


# -- running an attack beside a prober ------------------------------------------------------------------------

def _attack_main(attack: Attack, url: str, stop_flag: mp.synchronize.Event) -> None:
    async def main() -> None:
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop_flag.is_set():
                await asyncio.sleep(0.05)
            stop.set()

        host, port = split_url(url)
        await asyncio.gather(attack(host, port, stop), watch())

    asyncio.run(main())


class RunningAttack:
    """An attack in a child process (fork: the attack closures need not pickle), stopped on exit."""

    def __init__(self, attack: Attack, url: str, warmup_s: float = 1.0) -> None:
        ctx = mp.get_context("fork")
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=_attack_main, args=(attack, url, self.stop), daemon=True)
        self.warmup_s = warmup_s

    def __enter__(self) -> RunningAttack:
        self.proc.start()
        time.sleep(self.warmup_s)  # let the attack take hold before anything is measured
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


@dataclass
class Probe:
    """Tiny requests' latencies (ms) and statuses."""

    latencies_ms: list[float]
    statuses: list[int]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95))


def probe(url: str, body: bytes, count: int, path: str = "/segment", pause_s: float = 0.02,
          max_s: float = 60.0) -> Probe:
    """`count` sequential tiny requests, each on a fresh connection (as a new client would arrive); fewer if
    they take more than `max_s` in all. A request that fails or takes over 30 s counts as status 0."""
    latencies, statuses = [], []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                if path == "/segment":
                    r = client.post(path, content=body, params={"output": "stats"},
                                    headers={"Content-Type": "image/png"})
                else:
                    r = client.get(path)
            statuses.append(r.status_code)
        except httpx.HTTPError:
            statuses.append(0)
        latencies.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - start > max_s:
            break
        time.sleep(pause_s)
    return Probe(latencies, statuses)
