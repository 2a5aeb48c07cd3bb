"""Markdown for the GPU benchmark's results (see `bench.gpu_bench`): tables, and the targets as ratios."""

from __future__ import annotations

from typing import Any

from bench.gpu_report_diag import diagnostics


def _num(value: Any, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _point(config: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    for point in (config or {}).get("points", []):
        if point["concurrency"] == concurrency:
            return point
    return None


def _best(table: dict[Any, float] | None) -> tuple[Any, float]:
    if not table:
        return None, float("nan")
    size, value = max(table.items(), key=lambda kv: kv[1])
    return size, value


def _reference(raw: dict[str, dict[Any, float]]) -> dict[int, float]:
    """Raw ORT with the service's options, per batch size: NHWC, dynamic or with the dimensions fixed as the
    service's buckets are (runs that measured both: the faster of the two, the stricter reference)."""
    out: dict[int, float] = {}
    for layout in ("nhwc", "nhwc_fixed"):
        for size, ips in (raw.get(layout) or {}).items():
            out[int(size)] = max(out.get(int(size), 0.0), ips)
    return out


def _ratio(measured: float, reference: float) -> float:
    """measured / reference; NaN (a target not met) where the reference measured nothing, e.g. a configuration
    whose every answer was an error: the section must still be written."""
    return measured / reference if reference else float("nan")


def targets(r: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(target, how, measured ratio, goal) for each target the run can judge."""
    out = []
    raw = _reference(r.get("raw") or {})
    raw_size, raw_best = _best(raw)
    service = r.get("service")
    high = [p for p in (service or {}).get("points", []) if p["concurrency"] >= 32]
    if high and raw:
        best_point = max(high, key=lambda p: p["throughput"])
        out.append(("service at c>=32 / raw ORT at its best batch",
                    f"{best_point['throughput']:.0f} (c={best_point['concurrency']}) / {raw_best:.0f} (batch "
                    f"{raw_size})", _ratio(best_point["throughput"], raw_best), 0.9))
    c8 = _point(service, 8)
    raw8 = raw.get(8)
    if c8 and raw8:
        out.append(("service at c=8 / raw ORT batch 8", f"{c8['throughput']:.0f} / {raw8:.0f}",
                    _ratio(c8["throughput"], raw8), 0.8))
    c32 = _point(service, 32)
    if c32:
        out.append(("p99 / p50 at c=32 (at most)", f"{c32['p99']:.1f} / {c32['p50']:.1f} ms",
                    _ratio(c32["p99"], c32["p50"]), 2.0))
    eager_size, eager_best = _best(r.get("eager"))
    if high and r.get("eager"):
        best = max(p["throughput"] for p in high)
        out.append(("service / PyTorch eager fp16 channels_last at its best batch",
                    f"{best:.0f} / {eager_best:.0f} (batch {eager_size})", _ratio(best, eager_best), 1.0))
    fp32 = _point(r.get("fp32"), 32)
    if c32 and fp32:
        out.append(("service fp16 / fp32 at c=32", f"{c32['throughput']:.0f} / {fp32['throughput']:.0f}",
                    _ratio(c32["throughput"], fp32["throughput"]), 1.8))
    return out


def _base_env(r: dict[str, Any]) -> dict[str, str]:
    """The settings the run gave every service it started (a variant's row shows only what it changes): as saved,
    or, for runs saved before, what those runs set."""
    if "base_env" in r:
        return r["base_env"]
    on_gpu = "CUDAExecutionProvider" in (r.get("device") or {}).get("providers", [])
    return {"SEGMENT_MAX_BATCH_SIZE": r.get("args", {}).get("max_batch"), "SEGMENT_LOG_LEVEL": "warning",
            "SEGMENT_REQUIRE_GPU": str(on_gpu).lower()}


def _service_rows(name: str, config: dict[str, Any] | None) -> list[str]:
    rows = []
    masks = (config or {}).get("masks") or {}
    agree = f"{masks['agreement'] * 100:.2f}" if "agreement" in masks else ("error" if "error" in masks else "")
    if masks.get("consistent") is False:
        agree += " (inconsistent)"
    for p in (config or {}).get("points", []):
        stages = p.get("stages_ms") or {}
        split = ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items()))
        rows.append(f"| {name} | {p['concurrency']} | {p['throughput']:.1f} | {p['p50']:.1f} | {p['p99']:.1f} | "
                    f"{p['mean_batch']:.1f} | {p['errors']} | {split} | {agree} |")
    return rows


def render(r: dict[str, Any]) -> str:
    """The GPU section of docs/BENCHMARKS.md."""
    dev = r.get("device", {})
    model = r.get("model") or {}
    args = r.get("args", {})
    lines = [
        "### GPU: one run on one device",
        "",
        f"Device: {dev.get('gpu')}; onnxruntime {dev.get('onnxruntime')}, torch {dev.get('torch')}, cuDNN "
        f"{dev.get('cudnn')}, Python {dev.get('python')}, {dev.get('cpus')} CPUs. Model: {model.get('arch')} at "
        f"{model.get('input_size')}×{model.get('input_size')} (random weights, BatchNorm recalibrated), fp16 "
        f"variant unless noted. Uploads: {args.get('upload')} JPEG → `labels` PNG. Command: "
        f"`python -m bench.gpu_bench --out docs`.",
        "",
        "| target | measured | ratio | goal | met |",
        "|---|---|---|---|---|",
    ]
    for name, how, ratio, goal in targets(r):
        at_most = "at most" in name
        met = ratio <= goal if at_most else ratio >= goal
        lines.append(f"| {name} | {how} | {ratio:.2f} | {'≤' if at_most else '≥'} {goal} | "
                     f"{'yes' if met else '**no**'} |")
    raw = r.get("raw") or {}
    sizes = sorted({int(s) for table in raw.values() for s in table})
    if sizes:
        lines += ["", "Raw onnxruntime (img/s; one session per batch size, the service's provider options):", "",
                  "| batch | " + " | ".join(raw) + " |", "|---|" + "---|" * len(raw)]
        for size in sizes:
            cells = [_num(table.get(size, table.get(str(size), "")), 1) for table in raw.values()]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    extras = []
    for size, ips in ((r.get("raw_fp32") or {}).get("nhwc") or {}).items():
        extras.append(f"| raw onnxruntime fp32 (NHWC) | {size} | {_num(ips, 1)} |")
    for key, label in (("two_threads", "raw onnxruntime, two threads on one session"),
                       ("eager", "PyTorch eager (fp16 autocast, channels_last on CUDA)")):
        for size, ips in (r.get(key) or {}).items():
            extras.append(f"| {label} | {size} | {_num(ips, 1)} |")
    for size, variants in (r.get("bound") or {}).items():
        for variant, ips in variants.items():
            extras.append(f"| {variant} (device buffers) | {size} | {_num(ips, 1)} |")
    if extras:
        lines += ["", "| reference | batch | img/s |", "|---|---|---|", *extras]
    lines += ["", "The service (closed loop; stages are the service's own mean ms per request; masks: the least "
              "share of pixels of an answer equal to the first configuration's labels for the same image):", "",
              "| configuration | concurrency | img/s | p50 ms | p99 ms | mean batch | errors | stages ms | masks % |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("service", f"batching, max {args.get('max_batch')}, buckets, 2 in flight"),
                       ("off", "batching off"), ("fp32", "fp32"),
                       ("before", "old: dynamic shapes, NCHW, 1 in flight, max 8")):
        lines += _service_rows(label, r.get(key))
    base = _base_env(r)
    for key, config in r.items():
        if key.startswith("variant_") and isinstance(config, dict):
            settings = ", ".join(f"{k}={v}" for k, v in config.get("env", {}).items() if base.get(k) != v)
            if config.get("output", "labels") != "labels":
                settings = ", ".join(filter(None, [settings, f"output={config['output']}"]))
            if config.get("client_pool") == "shared":
                settings = ", ".join(filter(None, [settings, "client_pool=shared"]))
            lines += _service_rows(f"{key.removeprefix('variant_')}: {settings or 'defaults'}", config)
    service = r.get("service") or {}
    if service.get("first_batches"):
        def again(f: dict[str, Any], key: str) -> str:
            return f" (then {f[key]:.0f})" if f.get(key) is not None else ""

        lines += ["", "First request after `/readyz` for every bucket (that many concurrent requests at once; the "
                  "same again after it, in parentheses): "
                  + ", ".join(f"{f['bucket']}: {f['max_ms']:.0f} ms{again(f, 'again_ms')}"
                              for f in service["first_batches"]) + "."]
        pairs = [f for f in service["first_batches"] if f.get("pair_ms") is not None]
        if pairs:
            lines += ["", "Then twice that many at once, two batches of the bucket in flight together for the first "
                      "time: " + ", ".join(f"{f['bucket']}: {f['pair_ms']:.0f} ms{again(f, 'pair_again_ms')}"
                                           for f in pairs) + "."]
    memory = [f"{b['batch_size']}: {b['memory_bytes'] / 2**20:.0f} MiB" for b in
              (service.get("readyz") or {}).get("buckets", []) if b.get("memory_bytes") is not None]
    if memory or service.get("gpu_memory_mib"):
        lines += ["", f"GPU memory: service process {service.get('gpu_memory_mib')} MiB in all; per bucket when "
                  f"built and warmed: {', '.join(memory) or 'not reported'}."]
    others = [f"{key.removeprefix('variant_')} {config['gpu_memory_mib']} MiB" for key, config in r.items()
              if key != "service" and isinstance(config, dict) and config.get("gpu_memory_mib") is not None]
    if others:
        lines += ["", f"GPU memory of the other configurations' service process: {', '.join(others)}."]
    lines += diagnostics(r)
    failed = sorted(name for name in r.get("errors") or {} if name != "masks")  # masks: a finding, not a stage
    if failed:
        lines += ["", "Stages that failed: " + ", ".join(failed) + " (tracebacks in the JSON)."]
    if (r.get("errors") or {}).get("masks"):
        lines += ["", f"Mask check: {r['errors']['masks']}."]
    if r.get("skipped_for_time"):
        lines += ["", "Stages not started, the run's time limit having passed: " + ", ".join(r["skipped_for_time"])
                  + "."]
    return "\n".join(lines)
