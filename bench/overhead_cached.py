"""CPU per `POST /segment` of HTTP, the app and the thread hand-offs alone, this tree against another, and
polygons throughput at 8 clients with nothing cached.

Method: one `bench/cached_serve.py` server per tree (decode, model, resize back and render memoised, one intra-op
thread); sequential raw-body uploads of a 1024x768 JPEG on one keep-alive connection; the scheduler's exact run
time (`/proc/<pid>/task/*/schedstat`, ns) of the whole process and of its event-loop thread per request. Rounds
alternate the trees so both see the same machine load; medians over rounds. Then, unless `--no-throughput`,
plain `segment-serve`s answer 8 closed-loop clients asking for polygons, one tree at a time, alternating.

Usage:
    git archive <old-commit> | tar -x -C /tmp/before
    python -m bench.overhead_cached --before /tmp/before [--requests 300] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import sys
from pathlib import Path

from bench.harness import machine_note
from testkit import REPO
from testkit.images import encode
from testkit.load import closed_loop
from testkit.photos import photo
from testkit.procstat import run_ns
from testkit.server import ServerProcess

KINDS = ("labels", "stats", "polygons")


def upload(conn: http.client.HTTPConnection, data: bytes, kind: str) -> None:
    conn.request("POST", f"/segment?output={kind}", body=data, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"{kind}: HTTP {r.status} {body[:200]!r}")


def cpu_us(server: ServerProcess, conn: http.client.HTTPConnection, data: bytes, kind: str,
           n: int) -> tuple[float, float]:
    """Process and event-loop-thread CPU-µs per request over `n` sequential uploads."""
    pid = server.pid
    p0, l0 = run_ns(pid), run_ns(pid, pid)
    for _ in range(n):
        upload(conn, data, kind)
    return (run_ns(pid) - p0) / n / 1e3, (run_ns(pid, pid) - l0) / n / 1e3


def throughput(trees: dict[str, Path], data: bytes, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Polygons images/s at 8 clients, plain servers, one tree at a time."""
    got: dict[str, list[float]] = {t: [] for t in trees}
    for r in range(rounds):
        for t in (trees if r % 2 == 0 else reversed(list(trees))):
            with ServerProcess(None, cwd=trees[t], SEGMENT_INTRA_OP_THREADS="1") as server:
                server.wait_ready()
                asyncio.run(closed_loop(server.url, [data], 8, 3, 10_000, {"output": "polygons"}))  # warm-up
                samples, wall = asyncio.run(closed_loop(server.url, [data], 8, seconds, 100_000,
                                                        {"output": "polygons"}))
                got[t].append(sum(s.status == 200 for s in samples) / wall)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the older version")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per kind and round")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--throughput-rounds", type=int, default=3)
    args = ap.parse_args()
    trees = {"after": REPO, "before": args.before.resolve()}
    data = encode(photo("astronaut.png", size=(1024, 768)), "JPEG", 90)
    script = str(REPO / "bench" / "cached_serve.py")
    servers = {t: ServerProcess(None, cwd=path, command=[sys.executable, script], SEGMENT_INTRA_OP_THREADS="1",
                                PYTHONPATH=str(path)) for t, path in trees.items()}
    proc: dict[tuple[str, str], list[float]] = {(t, k): [] for t in trees for k in KINDS}
    loop: dict[tuple[str, str], list[float]] = {(t, k): [] for t in trees for k in KINDS}
    try:
        conns = {}
        for t, server in servers.items():
            server.wait_ready()
            host, port = server.url.removeprefix("http://").split(":")
            conns[t] = http.client.HTTPConnection(host, int(port), timeout=60)
            for kind in KINDS:
                cpu_us(server, conns[t], data, kind, 50)  # warm-up: imports, first shapes, the memo
        for r in range(args.rounds):
            for kind in KINDS:
                for t in (trees if r % 2 == 0 else reversed(list(trees))):
                    p, lp = cpu_us(servers[t], conns[t], data, kind, args.requests)
                    proc[(t, kind)].append(p)
                    loop[(t, kind)].append(lp)
    finally:
        for server in servers.values():
            server.terminate()
    med = statistics.median
    print(f"Command: `python -m bench.overhead_cached --before <checkout> --requests {args.requests} --rounds "
          f"{args.rounds}`. Medians of {args.rounds} alternating rounds; {machine_note()}.\n")
    print("| output | version | process CPU-µs per request | event-loop thread CPU-µs per request |\n|---|---|---|---|")
    for kind in KINDS:
        for t in trees:
            print(f"| {kind} | {t} | {med(proc[(t, kind)]):.0f} | {med(loop[(t, kind)]):.0f} |")
    if not args.no_throughput:
        got = throughput(trees, data, args.throughput_rounds, 15)
        print("\n| version | polygons images/s at 8 clients (median; rounds) |\n|---|---|")
        for t, values in got.items():
            print(f"| {t} | {med(values):.1f} ({', '.join(f'{v:.1f}' for v in values)}) |")
    print(f"\nload average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
