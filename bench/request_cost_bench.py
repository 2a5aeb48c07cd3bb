"""Server CPU per `POST /segment`, this tree against another, with concurrent clients; and proof that both trees
answer the same bytes.

Method: one real `segment-serve` per tree (the embedded model, one intra-op thread, default settings otherwise;
with `--cached`, `bench/cached_serve.py` instead: decode, model, resize back and render memoised, so that HTTP,
the app and the thread hand-offs are what is left). `--clients` keep-alive connections (a minimal asyncio
HTTP/1.1 client, so that the load generator takes little of the 2 CPUs) each send raw-body uploads of 1024x768
JPEGs of the five real photos, `--requests` per kind and round. CPU time is the scheduler's exact run time
(`/proc/<pid>/task/*/schedstat`): the whole process, its event-loop thread (the main thread) and the process
without its busiest thread (the inference thread: the model and the batching around it) per request. Rounds
alternate the trees' order so both see the same machine load; the table gives medians over rounds and the
median of the per-round after/before ratios (paired).

Before the rounds every tree answers each photo in each kind; the bodies and headers must be the same bytes
(the result id and the timings masked: they differ per request), else the run stops.

Usage:
    mkdir /tmp/before && git archive <old-commit> | tar -x -C /tmp/before
    python -m bench.request_cost_bench --before /tmp/before [--after <tree>] [--cached] [--rounds 12]
        [--requests 200] [--clients 4] [--kinds labels,stats] [--check-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

from bench.harness import machine_note
from testkit import REPO
from testkit.images import encode
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess

VOLATILE_HEADERS = {"x-result-id", "server-timing", "x-request-id", "date", "x-batch-size"}


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
                body: bytes) -> tuple[int, dict[str, str], bytes]:
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    content = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, content


async def _load(url: str, bodies: list[bytes], kind: str, clients: int, total: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    sent = 0

    async def one_client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while sent < total:
                body = bodies[sent % len(bodies)]
                sent += 1
                status, _, content = await _post(reader, writer, host, f"/segment?output={kind}", body)
                if status != 200:
                    raise RuntimeError(f"{kind}: HTTP {status} {content[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))


def _masked(headers: dict[str, str], content: bytes) -> tuple[dict[str, str], bytes]:
    """The answer with what differs per request masked: the result id (header and JSON member) and the
    `timing_ms` member (always the JSON answer's last; the length of the answer moves with it)."""
    if int(headers["content-length"]) != len(content):
        raise RuntimeError("Content-Length is not the body's length")
    result_id = headers.get("x-result-id", "")
    if result_id:
        content = content.replace(result_id.encode(), b"<id>")
    cut = content.rfind(b',"timing_ms":')
    if headers.get("content-type", "").endswith("json") and cut >= 0:
        json.loads(content)  # well-formed before the cut
        content = content[:cut] + b"}"
        headers = {k: v for k, v in headers.items() if k != "content-length"}
    return {k: v for k, v in headers.items() if k not in VOLATILE_HEADERS}, content


async def _answers(url: str, bodies: list[bytes], kinds: list[str]) -> list[tuple[dict[str, str], bytes]]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        out = []
        for kind in kinds:
            for body in bodies:
                status, headers, content = await _post(reader, writer, host, f"/segment?output={kind}", body)
                if status != 200:
                    raise RuntimeError(f"{kind}: HTTP {status} {content[:200]!r}")
                out.append(_masked(headers, content))
        return out
    finally:
        writer.close()


def _busiest_ns(before: dict[int, int], after: dict[int, int]) -> int:
    return max((ns - before.get(tid, 0) for tid, ns in after.items()), default=0)


def _thread_ns(pid: int) -> dict[int, int]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
    return out


def measure(server: ServerProcess, bodies: list[bytes], kind: str, clients: int, n: int) -> dict[str, float]:
    """CPU-µs per request over `n` uploads: process, event-loop thread, process without its busiest thread."""
    pid = server.pid
    threads0 = _thread_ns(pid)
    asyncio.run(_load(server.url, bodies, kind, clients, n))
    threads1 = _thread_ns(pid)
    total = sum(threads1.values()) - sum(threads0[t] for t in threads1 if t in threads0)
    loop = threads1[pid] - threads0[pid]
    return {"process": total / n / 1e3, "loop": loop / n / 1e3,
            "outside_inference": (total - _busiest_ns(threads0, threads1)) / n / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the older version")
    ap.add_argument("--after", type=Path, default=REPO, help="the newer version (default: this checkout)")
    ap.add_argument("--cached", action="store_true", help="codec and model memoised (bench/cached_serve.py)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--requests", type=int, default=200, help="uploads per kind, tree and round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--kinds", default="labels,stats", help="output kinds; a kind may carry more of the query "
                    "string, e.g. 'overlay&format=png'")
    ap.add_argument("--check-only", action="store_true", help="compare the answers, measure nothing")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    trees = {"after": args.after.resolve(), "before": args.before.resolve()}
    bodies = [encode(photo(name, size=(1024, 768)), "JPEG", 90) for name in PHOTOS]
    command = [sys.executable, str(REPO / "bench" / "cached_serve.py")] if args.cached else None
    servers = {t: ServerProcess(None, cwd=path, command=command, SEGMENT_INTRA_OP_THREADS="1",
                                PYTHONPATH=str(path)) for t, path in trees.items()}
    got: dict[tuple[str, str, str], list[float]] = {}
    try:
        for server in servers.values():
            server.wait_ready()
        if not args.cached:  # memoised servers answer the first photo's result for every photo
            answers = {t: asyncio.run(_answers(s.url, bodies, kinds)) for t, s in servers.items()}
            if answers["after"] != answers["before"]:
                raise SystemExit("the trees answer different bytes")
            print(f"answers: {len(answers['after'])} ({', '.join(kinds)} x {len(bodies)} photos), the same bytes "
                  "from both trees (result id and timings masked)")
        if args.check_only:
            return
        for server in servers.values():
            for kind in kinds:
                measure(server, bodies, kind, args.clients, 60)  # warm-up: every pool thread started
        for r in range(args.rounds):
            for kind in kinds:
                for t in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                    for metric, value in measure(servers[t], bodies, kind, args.clients, args.requests).items():
                        got.setdefault((t, kind, metric), []).append(value)
    finally:
        for server in servers.values():
            server.terminate()
    med = statistics.median
    mode = " --cached" if args.cached else ""
    print(f"Command: `python -m bench.request_cost_bench --before <tree>{mode} --rounds {args.rounds} --requests "
          f"{args.requests} --clients {args.clients} --kinds {args.kinds}`. Medians of {args.rounds} alternating "
          f"rounds; {machine_note()}.\n")
    print("| output | CPU-µs per request | before | after | after/before: median of paired rounds (quartiles) |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        for metric in ("process", "outside_inference", "loop"):
            b, a = got[("before", kind, metric)], got[("after", kind, metric)]
            q1, q2, q3 = statistics.quantiles([x / y for x, y in zip(a, b, strict=True)], n=4)
            print(f"| {kind} | {metric} | {med(b):.0f} | {med(a):.0f} | {q2:.3f} ({q1:.3f}-{q3:.3f}) |")
    print(f"\nload average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
