"""Hostile clients on raw sockets, for bench/hostile_bench.py.

Each attack is an async function `attack(host, port, stop)` that keeps attacking until `stop` is set;
`RunningAttack` runs one in a child process (so the attacker's CPU and GIL are not the prober's) while
testkit.load.probe times tiny requests. The raw-socket HTTP helpers and the probe are in testkit, as
tests/reliability/test_hostile_clients.py uses them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable

import httpx

from testkit.rawhttp import http_request, split_url

Attack = Callable[[str, int, asyncio.Event], Awaitable[None]]


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
