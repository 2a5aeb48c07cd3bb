"""What a device failure costs under load, and how fast the service sheds and recovers: a real server on the
embedded model whose every model run fails for a while (`testkit.failing_device`), closed-loop clients sending
1024x768 JPEGs, and /readyz polled every 20 ms. Writes a table into docs/RELIABILITY.md.

    python -m bench.device_fault_bench [--concurrency 8] [--fault-at 3] [--fault-for 4] [--seconds 12]

The server runs with its default guard settings (3 failed probes to unready, a probe every 2 s) and
SEGMENT_EXIT_WHEN_UNHEALTHY=false, so the recovery is seen rather than a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.harness import machine_note
from bench.markdown import write_section
from testkit.images import encode
from testkit.load import Sample, closed_loop
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess


async def _readiness(url: str, until: float) -> list[tuple[float, int]]:
    """(perf_counter, /readyz status) every 20 ms until `until`."""
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.perf_counter() < until:
            out.append((time.perf_counter(), (await client.get("/readyz")).status_code))
            await asyncio.sleep(0.02)
    return out


async def _run(url: str, flag: Path, args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    marks: dict[str, float] = {}

    async def fault() -> None:
        await asyncio.sleep(args.fault_at)
        flag.touch()
        marks["fault"] = time.perf_counter()
        await asyncio.sleep(args.fault_for)
        flag.unlink()
        marks["mended"] = time.perf_counter()

    until = time.perf_counter() + args.seconds
    (samples, wall), ready, _ = await asyncio.gather(
        closed_loop(url, bodies, args.concurrency, args.seconds, 10**9, params={"output": "labels"},
                    per_connection=True),
        _readiness(url, until), fault())
    start = time.perf_counter() - wall  # closed_loop's clock origin, to within microseconds
    return summarise(samples, [(t - start, s) for t, s in ready],
                     marks["fault"] - start, marks["mended"] - start)


def summarise(samples: list[Sample], ready: list[tuple[float, int]], fault: float, mended: float) -> dict[str, Any]:
    """The timeline in seconds from the load's start: what each phase answered, and when readiness changed."""
    def first(after: float, status: int) -> float | None:
        return next((t - after for t, s in ready if t >= after and s == status), None)

    def codes(chosen: list[Sample]) -> str:
        counts = Counter(str(s.status) if s.error_code is None else f"{s.status} `{s.error_code}`" for s in chosen)
        return ", ".join(f"{n} × {code}" for code, n in sorted(counts.items()))

    ended = lambda s: s.started_s + s.latency_s  # noqa: E731
    before = [s for s in samples if ended(s) < fault]
    during = [s for s in samples if fault <= ended(s) < mended]
    after = [s for s in samples if ended(s) >= mended]
    refused = [s.latency_s * 1000 for s in during if s.status == 503]
    unready = first(fault, 503)
    first_503 = min((ended(s) for s in during if s.status == 503), default=None)
    first_ok_after = min((ended(s) for s in after if s.status == 200), default=None)
    return {
        "before": codes(before), "during": codes(during), "after": codes(after),
        "ran_before_shedding": sum(s.status >= 500 for s in during if unready is None or ended(s) <= fault + unready),
        "first_503_after_fault_s": None if first_503 is None else first_503 - fault,
        "unready_after_fault_s": unready, "ready_after_mending_s": first(mended, 200),
        "first_200_after_mending_s": None if first_ok_after is None else first_ok_after - mended,
        "refusal_p50_ms": float(np.median(refused)) if refused else None,
        "throughput_before": len([s for s in before if s.status == 200]) / fault,
    }


def render(result: dict[str, Any], args: argparse.Namespace, note: str) -> str:
    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value * 1000:.0f} ms"

    refusal = "–" if result["refusal_p50_ms"] is None else f"{result['refusal_p50_ms']:.1f} ms"

    return "\n".join([
        "### A device failure under load (embedded model, 1024x768 JPEG → labels)",
        "",
        f"Command: `python -m bench.device_fault_bench --concurrency {args.concurrency} --fault-at {args.fault_at} "
        f"--fault-for {args.fault_for} --seconds {args.seconds}`. Every model run fails from {args.fault_at} s for "
        f"{args.fault_for} s; default guard settings; {note}.",
        "",
        "| phase | answers |",
        "|---|---|",
        f"| before the failure ({result['throughput_before']:.1f} img/s) | {result['before']} |",
        f"| device failing | {result['during']} |",
        f"| device mended | {result['after']} |",
        "",
        "| what | when |",
        "|---|---|",
        f"| requests answered 5xx before `/readyz` turned 503 (run in failing batches) | "
        f"{result['ran_before_shedding']} |",
        f"| first 503 `inference_unavailable` after the failure | {secs(result['first_503_after_fault_s'])} |",
        f"| `/readyz` 503 after the failure | {secs(result['unready_after_fault_s'])} |",
        f"| a 503's latency while shedding (p50) | {refusal} |",
        f"| `/readyz` 200 after the device was mended (the next probe: at most 2 s) | "
        f"{secs(result['ready_after_mending_s'])} |",
        f"| first 200 answer after the device was mended | {secs(result['first_200_after_mending_s'])} |",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--fault-at", type=float, default=3.0)
    ap.add_argument("--fault-for", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)
    bodies = [encode(photo(name, size=(1024, 768))) for name in PHOTOS]
    with tempfile.TemporaryDirectory() as folder:
        flag = Path(folder) / "device-broken"
        with ServerProcess(None, command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                           SEGMENT_EXIT_WHEN_UNHEALTHY="false") as server:
            server.wait_ready()
            result = asyncio.run(_run(server.url, flag, args, bodies))
    text = render(result, args, machine_note())
    print(text)
    write_section(args.out / "RELIABILITY.md", "device-fault", text)


if __name__ == "__main__":
    main()
