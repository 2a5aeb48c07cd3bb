"""The HTTP protocol layer's cost on the event loop, and the giant-header attack, another tree against this one.

Method: one real `segment-serve` per variant (one intra-op thread, the embedded model): `before` (another tree,
e.g. a `git archive` of an older commit), `now` (this tree) and `plain` (this tree's app on uvicorn's own
httptools protocol: no limits, the floor). Sequential requests on one keep-alive loopback connection; the CPU
time of the server's main thread, which runs the event loop and the HTTP parsing, over N requests, per request:
utime + stime from /proc/<pid>/task/<pid>/stat (clock ticks, attributed by sampling: noisy over short runs) and
the scheduler's exact run time from .../schedstat. Rounds interleave the variants so that all see the same machine
load. `GET /healthz` is the protocol layer nearly alone; `POST /segment?output=labels` carries a 133 KB
1024x768 JPEG (the inference, decode and encode run in other threads).

The attack: for 5 s one client streams 64 MiB headers (1 MiB writes) at each server, a new one whenever the last
is refused, while this process fetches `/healthz` on fresh connections; it reports what the attacker got, after
how long and how many bytes (what the kernel's socket buffers took before the refusal), and `/healthz`'s p50 and
slowest meanwhile (against its p50 before the attack; a fresh httpx client each time, so mostly client cost).

Usage:
    git -C <repo> archive <old-commit> | tar -x -C /tmp/before
    python -m bench.protocol_bench --before /tmp/before [--rounds 3] [--healthz 2000] [--segment 300]
Writes docs/bench/protocol.json.
"""

from __future__ import annotations

import argparse
import json
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
from testkit.procstat import cpu_seconds, run_ns
from testkit.rawhttp import connect, read_response, status_of
from testkit.server import ServerProcess

# segment-serve as shipped, except that uvicorn runs its own httptools protocol instead of the hardened one.
PLAIN = ("import sys, service.main as m\norig = m.build_config\n"
         "def plain(*a, **k):\n    c = orig(*a, **k)\n    c.http = 'httptools'\n    return c\n"
         "m.build_config = plain\nm.main(sys.argv[1:])\n")


def loop_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread (the event loop): utime + stime from /proc/<pid>/task/<pid>/stat
    (in clock ticks, sampled), and the scheduler's exact run time from .../schedstat."""
    return cpu_seconds(pid, pid), run_ns(pid, pid) / 1e9


def per_request_ms(server: ServerProcess, client: httpx.Client, kind: str, n: int,
                   jpeg: bytes) -> tuple[float, float]:
    """Event-loop CPU-ms per request over `n` sequential requests (each checked to be a 200): from stat, and
    from schedstat."""
    start = loop_cpu_s(server.pid)
    for _ in range(n):
        if kind == "healthz":
            r = client.get("/healthz")
        else:
            r = client.post("/segment", params={"output": "labels"}, content=jpeg,
                            headers={"Content-Type": "image/jpeg"})
        if r.status_code != 200:
            raise RuntimeError(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
    end = loop_cpu_s(server.pid)
    return (end[0] - start[0]) / n * 1000, (end[1] - start[1]) / n * 1000


def giant_header(server: ServerProcess, size: int = 64 << 20, duration_s: float = 5.0,
                 max_s: float = 60.0) -> dict[str, Any]:
    """For `duration_s` (at least one attempt), stream `size`-byte headers at the server, again whenever one is
    refused or done, while this thread fetches /healthz on fresh connections; what happened to both."""
    attempts: list[tuple[int, float, int]] = []  # (status, seconds, bytes sent) per attempt

    def one() -> None:
        sock = connect(server.url, timeout=max_s)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent, t0, chunk = 0, time.perf_counter(), b"a" * (1 << 20)
        try:
            while sent < size and time.perf_counter() - t0 < max_s:
                sent += sock.send(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # answered and closed
        raw, _ = read_response(sock, max(1.0, max_s - (time.perf_counter() - t0)))
        attempts.append((status_of(raw), time.perf_counter() - t0, sent))
        sock.close()

    def attack() -> None:
        t0 = time.perf_counter()
        while not attempts or time.perf_counter() - t0 < duration_s:
            one()

    def healthz_ms() -> float:
        t0 = time.perf_counter()
        try:
            ok = httpx.get(f"{server.url}/healthz", timeout=max_s).status_code == 200
        except httpx.HTTPError:
            ok = False
        time.sleep(0.02)
        return (time.perf_counter() - t0 - 0.02) * 1000 if ok else float("inf")

    idle = statistics.median(healthz_ms() for _ in range(30))
    thread = threading.Thread(target=attack)
    thread.start()
    latencies = []
    while thread.is_alive():
        latencies.append(healthz_ms())
    thread.join()
    statuses = [a[0] for a in attempts]
    return {"attempts": len(attempts), "statuses": {str(c): statuses.count(c) for c in sorted(set(statuses))},
            "median_s_per_attempt": statistics.median(a[1] for a in attempts),
            "median_mib_written": statistics.median(a[2] for a in attempts) / (1 << 20),
            "healthz_idle_p50_ms": idle, "healthz_probes": len(latencies),
            "healthz_p50_ms": statistics.median(latencies), "healthz_max_ms": max(latencies)}


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
    # per variant and request kind, per round: CPU-ms per request from stat and from schedstat
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {
        v: {k: {"stat": [], "schedstat": []} for k in ("healthz", "segment")} for v in variants}
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
                    by_stat, by_sched = per_request_ms(variants[v], clients[v], kind, n, jpeg)
                    cpu[v][kind]["stat"].append(by_stat)
                    cpu[v][kind]["schedstat"].append(by_sched)
                print(f"round {r} {v}: " + ", ".join(
                    f"{k} {cpu[v][k]['stat'][-1]:.3f} ms (schedstat {cpu[v][k]['schedstat'][-1]:.3f})"
                    for k in ("healthz", "segment")), flush=True)
        result["loop_cpu_ms_per_request"] = cpu
        result["median"] = {v: {k: {src: statistics.median(xs) for src, xs in by.items()} for k, by in kinds.items()}
                            for v, kinds in cpu.items()}
        print("medians:", json.dumps(result["median"]), flush=True)
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
