"""A tiny request's latency while hostile clients attack a real `segment-serve` process, against its idle latency;
and the per-request cost of the HTTP protocol layer (the hardened one, as served, against uvicorn's plain httptools).

Usage: python -m bench.hostile_bench [--baseline-ref fbfdc88] [--probes 40]
`--baseline-ref` runs the same attacks against that commit's service too (a `git archive` of it), for a
before/after table. Writes docs/bench/hostile.json; the table in docs/RELIABILITY.md is made from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import machine_note
from bench.hostile import (
    Attack,
    RunningAttack,
    aborted_uploads,
    huge_headers,
    partial_heads,
    refetches,
    stalled_uploads,
    uploads,
)
from service.settings import default_model_path
from testkit import REPO
from testkit.images import deep_grey_tiff, encode, scan_bomb
from testkit.load import probe
from testkit.photos import photo
from testkit.server import ServerProcess, free_port

TINY = encode(photo("astronaut.png", (32, 24)), "PNG")


def long_urls(clients: int) -> Attack:
    """`clients` loops each sending a 100,000-character URL."""
    import asyncio
    import contextlib

    async def attack(host: str, port: int, stop: asyncio.Event) -> None:
        async def one() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    await asyncio.wait_for(reader.read(), 10)
                    writer.close()
        await asyncio.gather(*(one() for _ in range(clients)))

    return attack


def big_result(url: str, side: int) -> str:
    """Segment a `side`² photo once; the path of its overlay for refetching."""
    body = encode(photo("astronaut.png", (side, side)), "JPEG", quality=85)
    r = httpx.post(f"{url}/segment", content=body, params={"output": "stats"},
                   headers={"Content-Type": "image/jpeg"}, timeout=300)
    r.raise_for_status()
    return f"/results/{r.json()['id']}/overlay.png"


ATTACKS: dict[str, Callable[[ServerProcess], Attack]] = {
    "200 stalled uploads (100 of 624 bytes, then silence)": lambda s: stalled_uploads(200),
    "200 heads cut off mid-header": lambda s: partial_heads(200),
    "a client streaming 64 MiB headers, again when refused": lambda s: huge_headers(1),
    "a client sending 100,000-character URLs in a loop": lambda s: long_urls(1),
    "12 clients refetching a 6300² overlay": lambda s: refetches(12, big_result(s.url, 6300)),
    "8 clients hanging up mid-upload": lambda s: aborted_uploads(8),
    "2 clients posting JPEG scan bombs (2048², 4,000 scans) in a loop":
        lambda s: uploads(2, scan_bomb(4000), "image/jpeg"),
    "2 clients posting 32-bit greyscale 6300² TIFFs in a loop": lambda s: uploads(2, deep_grey_tiff(), "image/tiff"),
}


def run_attacks(model: Path, cwd: Path, probes: int, env: dict[str, str]) -> dict[str, Any]:
    """Idle latency, then each attack in turn on one server process (ready again between attacks)."""
    out: dict[str, Any] = {}
    with ServerProcess(model, cwd=cwd, **env) as server:
        server.wait_ready()
        probe(server.url, TINY, 10)  # warm the path
        idle = probe(server.url, TINY, probes)
        out["idle"] = {"p50_ms": idle.p50, "p95_ms": idle.p95, "statuses": _count(idle.statuses)}
        print(f"idle: p50 {idle.p50:.1f} ms, p95 {idle.p95:.1f} ms", flush=True)
        for name, make in ATTACKS.items():
            attack = make(server)
            with RunningAttack(attack, server.url, warmup_s=2.0):
                t0 = time.perf_counter()
                seen = probe(server.url, TINY, probes, max_s=45)
                wall = time.perf_counter() - t0
                ready = _status(server.url + "/readyz")
            row = {"probes": len(seen.statuses), "p50_ms": seen.p50, "p95_ms": seen.p95,
                   "p50_vs_idle": seen.p50 / idle.p50, "statuses": _count(seen.statuses),
                   "readyz_during": ready, "wall_s": wall}
            out[name] = row
            print(f"{name}: p50 {seen.p50:.1f} ms ({row['p50_vs_idle']:.2f}x idle), p95 {seen.p95:.1f} ms, "
                  f"statuses {row['statuses']}, readyz {ready}", flush=True)
            server.wait_ready(timeout=120)
    return out


def _count(statuses: list[int]) -> dict[str, int]:
    return {str(s): statuses.count(s) for s in sorted(set(statuses))}


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


_PROTOCOL_SERVER = textwrap.dedent("""
    import sys, uvicorn
    from service.app import create_app
    from service.server import build_config
    from service.settings import Settings
    settings = Settings(model_path=sys.argv[1], port=int(sys.argv[2]), host="127.0.0.1", log_level="warning")
    config = build_config(create_app(settings), settings)
    if sys.argv[3] == "httptools":
        config.http = "httptools"
    uvicorn.Server(config).run()
""")


def protocol_cost(model: Path, requests: int) -> dict[str, Any]:
    """Mean per-request time on one keep-alive loopback connection: GET /healthz and a tiny POST /segment."""
    out: dict[str, Any] = {}
    for proto in ("hardened", "httptools"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", _PROTOCOL_SERVER, str(model), str(port), proto], cwd=REPO)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while _status(url + "/readyz") != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("protocol bench server did not start")
                time.sleep(0.1)
            row = {}
            with httpx.Client(base_url=url) as client:
                for label, call in (("healthz_us", lambda: client.get("/healthz")),
                                    ("tiny_segment_us", lambda: client.post(
                                        "/segment", content=TINY, params={"output": "stats"},
                                        headers={"Content-Type": "image/png"}))):
                    for _ in range(50):
                        call()
                    n = requests if label == "healthz_us" else requests // 4
                    t0 = time.perf_counter()
                    for _ in range(n):
                        call()
                    row[label] = (time.perf_counter() - t0) / n * 1e6
            out[proto] = row
            print(f"{proto}: {row}", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--protocol-requests", type=int, default=4000)
    ap.add_argument("--baseline-ref", help="also attack this commit's service (git archive), e.g. fbfdc88")
    ap.add_argument("--skip-attacks", action="store_true")
    args = ap.parse_args(argv)
    env = {"SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_LOG_LEVEL": "warning"}
    result: dict[str, Any] = {"load_before": machine_note(), "model": str(args.model.name),
                              "command": "python -m bench.hostile_bench " + " ".join(sys.argv[1:])}
    if not args.skip_attacks:
        result["now"] = run_attacks(args.model, REPO, args.probes, env)
    if args.baseline_ref:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "src.tar"
            subprocess.run(["git", "archive", "-o", str(archive), args.baseline_ref, "service"], cwd=REPO,
                           check=True)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            result["baseline"] = {"ref": args.baseline_ref, **run_attacks(args.model, Path(tmp), args.probes, env)}
    result["protocol"] = protocol_cost(args.model, args.protocol_requests)
    result["load_after"] = machine_note()
    out = args.docs / "bench" / "hostile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
