"""Turn the benchmark JSON files into markdown tables and matplotlib plots.

Usage: python -m bench.report [--docs docs]
Reads docs/bench/perf.json, writes docs/bench-*.png and replaces the
block between `<!-- perf:begin -->` and `<!-- perf:end -->` in docs/BENCHMARKS.md; from docs/bench/reliability.json
the `overload` and `soak` blocks of docs/RELIABILITY.md. The prose around the blocks is written by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.markdown import write_section

ENGINES = ("ort", "eager", "service_batched", "service_unbatched")
LABELS = {"ort": "raw ORT", "eager": "PyTorch eager", "service_batched": "service, batching on",
          "service_unbatched": "service, batching off"}


def _points(perf: dict[str, Any], engine: str, size: str) -> list[dict[str, Any]]:
    return sorted((p for p in perf["points"] if p["engine"] == engine and p["size"] == size),
                  key=lambda p: p["concurrency"])


def _sizes(perf: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(p["size"] for p in perf["points"]))


def _at(perf: dict[str, Any], engine: str, size: str, c: int) -> dict[str, Any] | None:
    return next((p for p in _points(perf, engine, size) if p["concurrency"] == c), None)


def plot_concurrency(perf: dict[str, Any], out: Path) -> None:
    sizes = _sizes(perf)
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 4 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        for engine in ENGINES:
            pts = _points(perf, engine, size)
            cs = [p["concurrency"] for p in pts]
            axes[row][0].plot(cs, [p["throughput"] for p in pts], marker="o", label=LABELS[engine])
            axes[row][1].plot(cs, [p["p95"] for p in pts], marker="o", label=LABELS[engine])
        axes[row][0].set(title=f"throughput, {size} upload", xlabel="concurrency", ylabel="images/s", xscale="log")
        axes[row][1].set(title=f"p95 latency, {size} upload", xlabel="concurrency", ylabel="ms", xscale="log",
                         yscale="log")
        for ax in axes[row]:
            ax.set_xticks(sorted({p["concurrency"] for p in perf["points"]}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.grid(True, which="both", alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle(f"{perf['model']['arch']} at letterbox {perf['model']['input_size']}, "
                 f"{perf['model']['threads']} threads, CPU")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def plot_stages(perf: dict[str, Any], out: Path, concurrency: int) -> None:
    bars = []
    for size in _sizes(perf):
        for engine in ("service_batched", "service_unbatched"):
            p = _at(perf, engine, size, concurrency)
            if p:
                bars.append((f"{size}\n{LABELS[engine].replace('service, ', '')}", p["stages_ms"], p["p50"]))
    stages = ["decode", "queue", "inference", "encode"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    left = [0.0] * len(bars)
    for stage in stages:
        values = [b[1].get(stage, 0.0) for b in bars]
        ax.barh([b[0] for b in bars], values, left=left, label=stage)
        left = [a + v for a, v in zip(left, values, strict=True)]
    ax.set(xlabel="mean ms per request", title=f"where a request's time goes (service metrics, concurrency "
                                                f"{concurrency})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _fmt(p: dict[str, Any] | None) -> str:
    if not p:
        return "–"
    return f"{p['throughput']:.1f} ({p['p50']:.0f} / {p['p95']:.0f} / {p['p99']:.0f})"


def perf_tables(perf: dict[str, Any]) -> list[str]:
    m, model = perf["machine"], perf["model"]
    lines = [
        f"Command: `{perf['command'].strip()}` ({perf['elapsed_s'] / 60:.1f} min). "
        f"Machine: {m['cpu']}, {m['platform']}; torch {m['torch']}, onnxruntime {m['onnxruntime']}.",
        f"Load while measuring: before {m['load_before']}; after {m['load_after']}.",
        f"Model: `{model['arch']}` {model['kwargs'] or '(default widths)'}, {model['weights']}, letterbox "
        f"{model['input_size']}, ONNX {model['onnx_mb']:.1f} MB, {model['threads']} intra-op threads everywhere.",
        "",
        "### Best batch size of each engine (images/s, model only, letterboxed tensor)",
        "",
        "| engine | " + " | ".join(f"batch {b}" for b in perf["batch_sweep"]["ort"]["img_per_s"]) + " | best |",
        "|---|" + "---|" * (len(perf["batch_sweep"]["ort"]["img_per_s"]) + 1),
    ]
    for engine in ("ort", "eager"):
        sweep = perf["batch_sweep"][engine]
        lines.append(f"| {LABELS[engine]} | " + " | ".join(f"{v:.1f}" for v in sweep["img_per_s"].values())
                     + f" | {sweep['best']} |")
    levels = sorted({p["concurrency"] for p in perf["points"]})
    for size in _sizes(perf):
        lines += ["", f"### {size} uploads: images/s (latency p50 / p95 / p99, ms)", "",
                  "| concurrency | " + " | ".join(LABELS[e] for e in ENGINES) + " |", "|---|" + "---|" * 4]
        for c in levels:
            lines.append(f"| {c} | " + " | ".join(_fmt(_at(perf, e, size, c)) for e in ENGINES) + " |")
    lines += ["", "### Ratios (throughput, same run)", "",
              "| upload | concurrency | service batching on / raw ORT | service batching off / raw ORT | "
              "raw ORT / PyTorch eager | mean batch (on) |", "|---|---|---|---|---|---|"]
    for size in _sizes(perf):
        for c in levels:
            o, e = _at(perf, "ort", size, c), _at(perf, "eager", size, c)
            b, u = _at(perf, "service_batched", size, c), _at(perf, "service_unbatched", size, c)
            if o and e and b and u:
                lines.append(f"| {size} | {c} | {b['throughput'] / o['throughput']:.2f} | "
                             f"{u['throughput'] / o['throughput']:.2f} | {o['throughput'] / e['throughput']:.1f}× | "
                             f"{b['mean_batch']:.1f} |")
    lines += ["", "### Stage means from the service's `segment_stage_duration_seconds` (ms per request)", "",
              "`decode` = decode + letterbox, `encode` = resize back + cache + PNG encode (as the service groups "
              "them).", "",
              "| upload | service | concurrency | decode | queue | inference | encode | client p50 |",
              "|---|---|---|---|---|---|---|---|"]
    for size in _sizes(perf):
        for engine in ("service_batched", "service_unbatched"):
            for c in (1, 16):
                p = _at(perf, engine, size, c)
                if p:
                    s = p["stages_ms"]
                    lines.append(f"| {size} | {LABELS[engine]} | {c} | " + " | ".join(
                        f"{s.get(k, 0):.1f}" for k in ("decode", "queue", "inference", "encode"))
                        + f" | {p['p50']:.1f} |")
    split = perf.get("stage_split_ms")
    if split:
        keys = list(next(iter(split.values())))
        lines += ["", "### The same functions timed one by one (single request, no concurrency; median ms)", "",
                  "| upload | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for size, t in split.items():
            lines.append(f"| {size} | " + " | ".join(f"{t[k]:.1f}" for k in keys) + " |")
    r50 = perf.get("resnet50_check")
    if r50:
        lines += ["", "### Full-width `deeplabv3_resnet50`, batch 1, interleaved", "",
                  f"{r50['size']}×{r50['size']}: ORT {r50['ort_ms']:.0f} ms, eager {r50['eager_ms']:.0f} ms, "
                  f"eager/ORT = **{r50['eager_over_ort']:.2f}×** (median of {r50['reps']} paired runs)."]
    return lines


def overload_tables(rel: dict[str, Any]) -> list[str]:
    runs = [(k, rel[k]) for k in ("overload_before_admission_fix", "overload") if k in rel]
    lines = [f"Load: {runs[-1][1]['load']}.", "",
             "| run | capacity img/s | offered req/s | 200 | 503 (all with Retry-After) | other 5xx | not sent "
             "(client cap) | 200s identical to direct ORT | accepted p50 / p99 | RSS start → max (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in runs:
        name = "before the admission bound" if key.endswith("fix") else "now"
        retry = "yes" if r["missing_retry_after"] == 0 else f"{r['missing_retry_after']} without"
        lines.append(f"| {name} | {r['capacity']:.1f} | {r['rate']:.1f} | {r['accepted']} | "
                     f"{r['rejected']} ({retry}) | "
                     f"{r['other_5xx']} | {r['not_sent']} | {r['exact']} / {r['accepted']} | "
                     f"{r['accepted_p50_ms'] / 1000:.1f} s / {r['accepted_p99_ms'] / 1000:.1f} s | "
                     f"{r['rss_start_kib'] / 1024:.0f} → {r['rss_max_kib'] / 1024:.0f} |")
    return lines


def soak_tables(rel: dict[str, Any]) -> list[str]:
    lines = ["| run | requests | failures | RSS after warm-up | RSS at end | max after warm-up | growth (end) | "
             "time | load |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(k for k in rel if k.startswith("soak")):
        r = rel[key]
        name = "default settings" if key == "soak" else f"control: {r['env']}"
        lines.append(f"| {name} | {r['requests']} (warm-up {r['warmup']}) | {r['failures']} | "
                     f"{r['rss_after_warmup_kib'] / 1024:.0f} MiB | {r['rss_end_kib'] / 1024:.0f} MiB | "
                     f"{r['rss_max_after_warmup_kib'] / 1024:.0f} MiB "
                     f"(+{(r['rss_max_after_warmup_kib'] / r['rss_after_warmup_kib'] - 1) * 100:.1f} %) | "
                     f"{r['growth'] * 100:+.1f} % | {r['seconds']:.0f} s | {r['load'].split('load average ')[1]} |")
    lines += ["", "Commands: `" + "`, `".join(rel[k]["command"].strip() for k in sorted(rel) if k.startswith("soak"))
              + "`."]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)
    perf = json.loads((args.docs / "bench" / "perf.json").read_text())
    plot_concurrency(perf, args.docs / "bench-concurrency.png")
    plot_stages(perf, args.docs / "bench-stages.png", 16)
    lines = perf_tables(perf)
    write_section(args.docs / "BENCHMARKS.md", "perf", "\n".join(lines))
    rel_path = args.docs / "bench" / "reliability.json"
    if rel_path.exists():
        rel = json.loads(rel_path.read_text())
        if "overload" in rel:
            write_section(args.docs / "RELIABILITY.md", "overload", "\n".join(overload_tables(rel)))
        if "soak" in rel:
            write_section(args.docs / "RELIABILITY.md", "soak", "\n".join(soak_tables(rel)))
    print("wrote", args.docs / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
