"""The HTTP protocol layer's cost on the event loop, and the giant-header attack, another tree against this one.

Method: one real `segment-serve` per variant (one intra-op thread, the embedded model): `before` (another tree,
e.g. a `git archive` of an older commit), `now` (this tree) and `plain` (this tree's app on uvicorn's own
httptools protocol: no limits, the floor). Sequential requests on one keep-alive loopback connection; the CPU
time (utime + stime, /proc/<pid>/task/<pid>/stat) of the server's main thread, which runs the event loop and
the HTTP parsing, over N requests, per request. Rounds interleave the variants so that all see the same machine
load. `GET /healthz` is the protocol layer nearly alone; `POST /segment?output=labels` carries a 133 KB
1024x768 JPEG (the inference, decode and encode run in other threads).

The attack: one client streams a 64 MiB header (1 MiB writes) at each server, while this process fetches
`/healthz` on fresh connections; it reports what the attacker got, after how long and how many bytes, and the
slowest `/healthz` meanwhile.

Usage:
    git -C <repo> archive <old-commit> | tar -x -C /tmp/before
    python -m bench.protocol_bench --before /tmp/before [--rounds 3] [--healthz 2000] [--segment 300]
Writes docs/bench/protocol.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import machine_note
from service.settings import default_model_path
from testkit import REPO
from testkit.images import encode
from testkit.photos import photo
from testkit.rawhttp import read_response, split_url, status_of
from testkit.server import ServerProcess

CLK_TCK = os.sysconf("SC_CLK_TCK")
# segment-serve as shipped, except that uvicorn runs its own httptools protocol instead of the hardened one.
PLAIN = ("import sys, service.main as m\norig = m.build_config\n"
         "def plain(*a, **k):\n    c = orig(*a, **k)\n    c.http = 'httptools'\n    return c\n"
         "m.build_config = plain\nm.main(sys.argv[1:])\n")


def loop_cpu_s(pid: int) -> float:
    """utime + stime of a process's main thread (the event loop), in seconds."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def per_request_ms(server: ServerProcess, client: httpx.Client, kind: str, n: int, jpeg: bytes) -> float:
    """Event-loop CPU-ms per request over `n` sequential requests (each checked to be a 200)."""
    start = loop_cpu_s(server.pid)
    for _ in range(n):
        if kind == "healthz":
            r = client.get("/healthz")
        else:
            r = client.post("/segment", params={"output": "labels"}, content=jpeg,
                            headers={"Content-Type": "image/jpeg"})
        if r.status_code != 200:
            raise RuntimeError(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
    return (loop_cpu_s(server.pid) - start) / n * 1000


def giant_header(server: ServerProcess, size: int = 64 << 20, max_s: float = 60.0) -> dict[str, Any]:
    """Stream a `size`-byte header at the server while probing /healthz; what happened to both."""
    result: dict[str, Any] = {}

    def attack() -> None:
        sock = socket.create_connection(split_url(server.url), timeout=max_s)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent, t0, chunk = 0, time.perf_counter(), b"a" * (1 << 20)
        try:
            while sent < size and time.perf_counter() - t0 < max_s:
                sent += sock.send(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # answered and closed
        raw, _ = read_response(sock, max(1.0, max_s - (time.perf_counter() - t0)))
        result.update(status=status_of(raw), seconds=time.perf_counter() - t0, mib_sent=sent / (1 << 20))
        sock.close()

    thread = threading.Thread(target=attack)
    thread.start()
    latencies = []
    while thread.is_alive():
        t0 = time.perf_counter()
        try:
            ok = httpx.get(f"{server.url}/healthz", timeout=max_s).status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append((time.perf_counter() - t0) * 1000 if ok else float("inf"))
        time.sleep(0.02)
    thread.join()
    return {**result, "healthz_probes": len(latencies), "healthz_max_ms": max(latencies, default=0.0),
            "healthz_p50_ms": statistics.median(latencies) if latencies else 0.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, help="a checkout of the older tree (omit to measure this tree only)")
    ap.add_argument("--no-plain", action="store_true", help="leave out uvicorn's plain httptools protocol")
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--healthz", type=int, default=2000, help="GET /healthz per round and variant")
    ap.add_argument("--segment", type=int, default=300, help="POST /segment per round and variant")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "protocol.json")
    args = ap.parse_args(argv)
    jpeg = encode(photo("astronaut.png", size=(1024, 768)), "JPEG", 90)
    env = {"SEGMENT_INTRA_OP_THREADS": "1"}
    model = args.model.resolve()
    variants: dict[str, ServerProcess] = {}
    if args.before:
        variants["before"] = ServerProcess(model, cwd=args.before.resolve(), **env)
    variants["now"] = ServerProcess(model, **env)
    if not args.no_plain:
        variants["plain"] = ServerProcess(model, command=[sys.executable, "-c", PLAIN], **env)
    result: dict[str, Any] = {"load_before": machine_note(), "jpeg_bytes": len(jpeg),
                              "command": "python -m bench.protocol_bench " + " ".join(sys.argv[1:])}
    cpu: dict[str, dict[str, list[float]]] = {v: {"healthz": [], "segment": []} for v in variants}
    try:
        for s in variants.values():
            s.wait_ready()
        clients = {v: httpx.Client(base_url=s.url, timeout=60) for v, s in variants.items()}
        for v, s in variants.items():  # warm-up: first requests pay imports, allocations, ORT's first shapes
            per_request_ms(s, clients[v], "healthz", 200, jpeg)
            per_request_ms(s, clients[v], "segment", 20, jpeg)
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for v in order:
                for kind, n in (("healthz", args.healthz), ("segment", args.segment)):
                    cpu[v][kind].append(per_request_ms(variants[v], clients[v], kind, n, jpeg))
                print(f"round {r} {v}: healthz {cpu[v]['healthz'][-1]:.3f} ms, "
                      f"segment {cpu[v]['segment'][-1]:.3f} ms", flush=True)
        result["loop_cpu_ms_per_request"] = cpu
        result["giant_header"] = {}
        for v, s in variants.items():
            result["giant_header"][v] = row = giant_header(s)
            print(f"64 MiB header, {v}: {row}", flush=True)
    finally:
        for s in variants.values():
            s.terminate()
    result["load_after"] = machine_note()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
