"""Markdown for the GPU benchmark's diagnostics (see `bench.gpu_diagnose`): the load generator's ceiling, the
server's CPU per thread group with /healthz latency under load, the GIL, and K service processes per GPU.
Runs saved before these diagnostics existed render without them."""

from __future__ import annotations

from typing import Any

from bench.gil_probe import ms_per_request

MAIN_GROUPS = ("loop", "codec", "inference")


def _f(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def _groups(threads: dict[str, dict[str, float]]) -> list[str]:
    """Cores of the event loop, codec and inference pools, native threads, and the rest."""
    cores = {name: t["cores"] for name, t in threads.items()}
    native = sum(v for k, v in cores.items() if k.startswith("native"))
    rest = sum(v for k, v in cores.items() if k not in MAIN_GROUPS and not k.startswith("native"))
    return [_f(cores.get(g, 0.0), 2) for g in MAIN_GROUPS] + [_f(native, 2), _f(rest, 2)]


def _configs(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    named = [("service", r.get("service")), ("batching off", r.get("off")), ("fp32", r.get("fp32")),
             ("old", r.get("before"))]
    named += [(k.removeprefix("variant_"), v) for k, v in r.items() if k.startswith("variant_")]
    return [(name, config) for name, config in named if isinstance(config, dict)]


def _null(r: dict[str, Any]) -> list[str]:
    null = r.get("null") or {}
    if not null.get("points"):
        return []
    lines = ["", f"Load-generator ceiling: the same clients against a null server that reads each body and answers a "
             f"fixed {null.get('answer_bytes')}-byte PNG:", "",
             "| client pool | concurrency | req/s | p50 ms | clients' cores (busiest process) | null server cores |",
             "|---|---|---|---|---|---|"]
    for p in null["points"]:
        lines.append(f"| {p.get('client_pool', 'shared')} | {p['concurrency']} | {_f(p['throughput'])} | "
                     f"{_f(p['p50'])} | {_f(p['client_cores'], 2)} ({_f(p['client_core_max'], 2)}) | "
                     f"{_f(p['server_cores'], 2)} |")
    service = [p for p in (r.get("service") or {}).get("points", []) if p["concurrency"] >= 32]
    if service:
        best = max(service, key=lambda p: p["throughput"])
        pool = best.get("client_pool", "shared")
        ceiling = max((p["throughput"] for p in null["points"] if p.get("client_pool", "shared") == pool),
                      default=None)
        if ceiling:
            lines += ["", f"Service at its best (c={best['concurrency']}, {pool} pool) / null ceiling with the same "
                      f"pool: {best['throughput']:.0f} / {ceiling:.0f} = {best['throughput'] / ceiling:.2f}."]
    return lines


def _threads(r: dict[str, Any]) -> list[str]:
    rows = []
    for name, config in _configs(r):
        idle = config.get("healthz_idle")
        for p in config.get("points", []):
            if "threads" not in p:
                continue
            h, lag = p.get("healthz") or {}, p.get("loop_lag_ms") or {}
            rows.append(f"| {name} | {p['concurrency']} | {_f(p['throughput'])} | {_f(p['server_cores'], 2)} | "
                        + " | ".join(_groups(p["threads"])) + f" | {_f(h.get('p50'))} / {_f(h.get('p99'))} / "
                        f"{_f(h.get('max'))} (idle {_f((idle or {}).get('p50'))}) | {_f(lag.get('mean'), 2)} / "
                        f"{_f(lag.get('p99'))} | {_f(p.get('client_cores'), 2)} ({_f(p.get('client_core_max'), 2)}) |")
    if not rows:
        return []
    return ["", "Where the CPU goes (cores per thread group of the server process; native: threads Python did not "
            "start, mostly onnxruntime's) and how long a trivial `GET /healthz` on its own connection waits meanwhile "
            "(p50 / p99 / max ms, and p50 with no load), with the event loop's own lag (mean / p99 ms, "
            "`segment_event_loop_lag_seconds`):", "",
            "| configuration | concurrency | img/s | server cores | loop | codec | inference | native | other | "
            "/healthz ms | loop lag ms | clients' cores (busiest process) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows]


def _gil(r: dict[str, Any]) -> list[str]:
    lines = []
    for name, config in _configs(r):
        for p in config.get("points", []):
            gil = p.get("gil")
            if not gil:
                continue
            if "unavailable" in gil:
                lines.append(f"- {name}, c={p['concurrency']}: not measured ({gil['unavailable']}).")
                continue
            holders = ", ".join(f"{k} {v:.0%}" for k, v in gil["by_group"].items())
            top = "; ".join(f"`{k}` {v:.0%}" for k, v in list(gil["top_functions"].items())[:4])
            ms = ms_per_request(gil["held"], p.get("throughput") or 0.0)
            lines.append(f"- {name}, c={p['concurrency']}: held {gil['held']:.0%} of the time ({holders}), "
                         f"{ms:.2f} ms per request, so one process answers at most "
                         f"{1000 / ms if ms > 0 else float('inf'):.0f} req/s; "
                         f"where: {top}.")
    if not lines:
        return []
    return ["", "The GIL of the server process (py-spy samples, 100/s; share of the time some thread holds it, by "
            "holder, and the functions it is held in most, as shares of the held samples):", "", *lines]


def _multi(r: dict[str, Any]) -> list[str]:
    multi = r.get("multi") or {}
    counts = sorted(int(k) for k in multi if k.isdigit())
    if not counts:
        return []
    concurrencies = {p["concurrency"] for k in counts for p in multi[str(k)].get("points", [])}
    lines = ["", "Several service processes on one GPU (same model and settings; the clients' connections spread "
             "evenly over them):", "",
             "| processes | concurrency | img/s | per process | p50 ms | p99 ms | server cores | clients' cores | "
             "GPU MiB per process |", "|---|---|---|---|---|---|---|---|---|"]
    service = r.get("service") or {}
    for p in service.get("points", []):
        if p["concurrency"] in concurrencies:
            lines.append(f"| 1 (service stage) | {p['concurrency']} | {_f(p['throughput'])} | – | {_f(p['p50'])} | "
                         f"{_f(p['p99'])} | {_f(p['server_cores'])} | {_f(p.get('client_cores'))} | "
                         f"{service.get('gpu_memory_mib')} |")
    for k in counts:
        result = multi[str(k)]
        memory = ", ".join(str(m) for m in result.get("gpu_memory_mib") or [])
        for p in result.get("points", []):
            split = ", ".join(_f(s["throughput"], 0) for s in p.get("servers", []))
            lines.append(f"| {k} | {p['concurrency']} | {_f(p['throughput'])} | {split} | {_f(p['p50'])} | "
                         f"{_f(p['p99'])} | {_f(p['server_cores'])} | {_f(p.get('client_cores'))} | {memory} |")
    return lines


def diagnostics(r: dict[str, Any]) -> list[str]:
    """The diagnostics' tables, or nothing for a run without them."""
    return [*_null(r), *_threads(r), *_gil(r), *_multi(r)]
