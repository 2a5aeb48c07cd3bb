"""GPU benchmark, one command on a GPU host: raw onnxruntime per batch bucket (NCHW vs NHWC), IOBinding and CUDA
graphs, PyTorch eager fp16 channels_last, and the service (batching on and off, fp16 and fp32, and the old
dynamic-shape configuration) at several concurrencies with p50/p99, the first request after readiness for every
bucket, and GPU memory. All figures come from one run on one device.

    python -m bench.gpu_bench --out docs            # writes a GPU section into docs/BENCHMARKS.md
    python -m bench.gpu_bench --render results.json  # rewrites that section from a saved run

Results are saved as JSON after every stage (`--json`), with each stage's seconds (`stage_s`), so a run cut short
still reports what it measured; the stages the targets and the settings still to decide need run first (raw,
eager, the service, the variants, fp32 through the service), the references and diagnostics after them. No stage
starts after `--time-limit` seconds (default 480: a lent GPU's 600 s command, less its setup and one last stage),
and a service start that is not ready within `--ready-timeout`, or whose warm-up keeps failing, fails its stage:
the run ends by itself, with the stages left listed as not started, rather than being killed mid-stage.

Every stage plus the settings still to be decided on a GPU (a full run took about 3 minutes on an H200: the
service is ready 3-9 s after start, the export takes about 12 s; with the variants allow 6-7 minutes):

    python -m bench.gpu_bench --out docs --variant workers2:SEGMENT_WORKERS=2 \
        --variant graphs:SEGMENT_IO_BINDING=cuda_graph --variant threads4:SEGMENT_WORKER_THREADS=4 \
        --variant fill:SEGMENT_FILL_WHILE_BUSY=true \
        --variant pow2:SEGMENT_CUDA_OPTIONS=arena_extend_strategy=kNextPowerOfTwo --variant-concurrency 8,32,64

A shorter one that answers where the limit is and whether CUDA graphs pay (about 5 minutes):

    python -m bench.gpu_bench --out docs --skip raw_fp32,two_threads,eager,off,fp32,before \
        --raw-sizes 1,8,16,32 --concurrency 8,32,64 --seconds 5 \
        --variant graphs:SEGMENT_IO_BINDING=cuda_graph --variant shared:client_pool=shared \
        --variant threads4:SEGMENT_WORKER_THREADS=4 --variant workers2:SEGMENT_WORKERS=2

(`workers2`: two server processes on the port, sharing the GPU; more img/s than the defaults means one interpreter
was the limit, as `multi` measures with separate servers. `threads4`: the codec pool defaults to one thread per
CPU; on an H200 host at concurrency 32-64 the decode stage took 3-5x its time at concurrency 1 while the host's
cores were far from busy, the mark of threads waiting for the interpreter rather than for a core; fewer codec
threads contend less. `fill`: a batch forming while the other runs keeps filling until it is nearly done; in
emulation that paid on a device running one batch at a time and not on one where batches overlap; which one a GPU
is, this measures. `pow2`: the buckets' memory arenas growing by powers of two, onnxruntime's default, against the
exact growth they now get: the GPU memory and the speed that changes.)

On an offline GPU host that has PyTorch but not the serving stack, and takes at most 64 MiB of files:
`bash bench/gpu_host.sh bundle` then `bash bench/gpu_host.sh slim` here, send the tree with `.gpu/`, run
`source .gpu/setup.sh && python3 -m bench.gpu_bench ...` there (the setup ends with `--check-imports`, which
names any package the service still misses in seconds), and `bash bench/gpu_host.sh restore` here afterwards.

Before spending GPU time, the same code paths (less the CUDA-only `bound` stage) run on a CPU in about a minute with
a tiny model; a stage that fails there fails on the GPU too:

    python -m bench.gpu_bench --arch deeplabv3_resnet50 --input-size 65 --raw-sizes 1,2 --eager-sizes 1 \
        --concurrency 2 --seconds 1 --raw-seconds 0.2 --clients 1 --max-batch 2 --diag-concurrency 2 \
        --multi-processes 2 --skip gil --workdir /tmp/gpu_dry --json /tmp/gpu_dry.json --out /tmp/gpu_dry

Diagnostics (stages `null`, `multi`, and `gil`; each skippable with `--skip`), and how to read them when the
service stays well below raw onnxruntime:

- `null`: the same load-generator processes, bodies and concurrencies against a null server (reads each body,
  answers a fixed PNG of a real answer's size), with both ways of holding connections. If its req/s is near
  the service's img/s, or a client process's CPU ("busiest") is near 1 core, the load generator is the limit,
  not the service. httpx's shared pool is far dearer per request than one client per connection, hence
  `--client-pool per-connection` (the default; `client_pool=shared` in a variant reruns the older way).
- Per load point: the server's CPU per thread group (`loop` = the event loop on the main thread, the `codec`
  and `inference` pools, `native` = threads Python did not start, mostly onnxruntime's), and `GET /healthz`
  timed every 50 ms on its own connection. The interpreter is saturated when the loop or the pools' Python
  share nears one core in all, /healthz p99 rises to many ms over its idle value, and py-spy's GIL share
  (`gil`, from concurrency 32 in the service stage; optional, needs ptrace) nears 100 %. If the GIL is held
  well below that and /healthz stays near idle, one process's interpreter is not the limit.
- `multi`: K service processes on the GPU, the connections spread evenly. If K processes serve clearly more
  than one (the service stage at the same concurrency), one process's GIL/event loop was the limit and
  serving several processes per GPU pays; if not, the limit is the GPU, the batching, or the load generator.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import onnxruntime as ort

from bench.gpu_diagnose import label_like_png, multi_process, null_ceiling
from bench.gpu_env import device_info, missing_imports
from bench.gpu_masks import MaskReference, mask_failures
from bench.gpu_raw import (
    bound_stage,
    eager,
    export_models,
    on_provider,
    raw_ort,
    release_gpu_memory,
    synthetic_photo,
    two_threads,
)
from bench.gpu_report import render
from bench.gpu_service import READY_TIMEOUT_S, parse_variant, service_config
from bench.gpu_stages import Stages, in_child
from bench.markdown import write_section
from service.core import nvml
from service.core.sessions import CPU, CUDA, create_session
from testkit.images import encode

# What the run imports besides the service and this module: the exporter of its first stage (torch, torchvision,
# onnx, onnxconverter-common) and the modules its server subprocesses start from.
BENCH_MODULES = ("model_export.architectures", "model_export.export", "model_export.quantize", "model_export.wrapper",
                 "onnxconverter_common.float16", "bench.thread_map", "bench.null_server")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="deeplabv3_resnet101")
    ap.add_argument("--input-size", type=int, default=513)
    ap.add_argument("--upload", default="1024x768", help="upload size WxH (JPEG)")
    ap.add_argument("--max-batch", type=int, default=16, help="the service's SEGMENT_MAX_BATCH_SIZE")
    ap.add_argument("--raw-sizes", default="1,2,4,8,16,32")
    ap.add_argument("--eager-sizes", default="1,8,16,32")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--seconds", type=float, default=6.0, help="per load point")
    ap.add_argument("--raw-seconds", type=float, default=1.5, help="per raw/eager measurement")
    ap.add_argument("--clients", type=int, default=4, help="load-generator processes")
    ap.add_argument("--skip", default="", help="comma list of stages to skip: raw,raw_fp32,two_threads,bound,"
                    "eager,service,null,multi,off,fp32,before, and gil (py-spy sampling in the service stage)")
    ap.add_argument("--diag-concurrency", default="32,64", help="the null-server and multi-process load points")
    ap.add_argument("--client-pool", choices=["per-connection", "shared"], default="per-connection",
                    help="load generator: one httpx client per connection, or one shared pool per process (what "
                    "runs before this option used; the null stage measures both)")
    ap.add_argument("--multi-processes", default="2,3", help="service processes per GPU in the multi stage")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra service run NAME:KEY=VALUE,... (SEGMENT_* variables, output=KIND, or "
                         "client_pool=shared|per-connection; a value may hold commas), repeatable")
    ap.add_argument("--variant-concurrency", default="32,64")
    ap.add_argument("--time-limit", type=float, default=480.0,
                    help="seconds after which no stage starts (0: none); the run then saves and renders what it has")
    ap.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                    help="seconds a service start may take to become ready (less when the time limit is near)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpu_bench"))
    ap.add_argument("--json", type=Path, default=Path("gpu_bench.json"))
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--render", type=Path, help="only rewrite the docs section from a saved JSON run")
    ap.add_argument("--check-imports", action="store_true",
                    help="only check that every service module imports here (exit 2 naming what is missing)")
    args = ap.parse_args(argv)
    try:  # checked before any stage runs: a variant that cannot parse must not end the run midway
        variants = dict(parse_variant(spec) for spec in args.variant)
    except ValueError as exc:
        ap.error(str(exc))
    if len(variants) < len(args.variant):  # each variant's results are saved under its name
        ap.error("--variant names must differ")
    if args.render:
        write_section(args.out / "BENCHMARKS.md", "gpu", render(json.loads(args.render.read_text())))
        return
    missing = missing_imports(BENCH_MODULES)
    if missing:
        print("the service cannot start here, missing: "
              + "; ".join(f"{package} (needed by {', '.join(modules)})" for package, modules in missing.items()),
              file=sys.stderr)
        sys.exit(2)
    if args.check_imports:
        print(f"onnxruntime {ort.__version__} {ort.get_available_providers()}; every service module imports")
        device = nvml.device_handle(0)
        print("NVML reads GPU 0" if device is not None and nvml.read(device) is not None else
              "NVML reads no GPU here (nvidia-ml-py missing, or no device): no bucket memory, no segment_gpu_*")
        return

    skip = set(filter(None, args.skip.split(",")))
    ints = lambda spec: [int(v) for v in spec.split(",") if v]  # noqa: E731
    on_gpu = CUDA in ort.get_available_providers()
    provider, device = (CUDA, "cuda") if on_gpu else (CPU, "cpu")
    # Every service the run starts gets these settings, a variant's over them (rows show only what a variant changes).
    base = {"SEGMENT_MAX_BATCH_SIZE": str(args.max_batch), "SEGMENT_LOG_LEVEL": "warning",
            # A service quietly on the CPU would spend each load point measuring the wrong thing: refuse to start.
            "SEGMENT_REQUIRE_GPU": str(on_gpu).lower()}
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device_info(),
                               "base_env": base, "variants": variants, "errors": {}}
    stages = Stages(results, args.json, skip, args.time_limit)
    stage = stages.run

    holder: dict[str, Any] = {}

    def export() -> dict[str, Any]:
        info, holder["model"] = export_models(args.workdir, args.arch, args.input_size, device)
        return info

    # The order puts first what the targets and the settings still to decide need (raw at every batch, eager,
    # the service with its defaults, the variants, fp32 through the service), so a run cut short by a time limit
    # keeps those; the references and diagnostics follow.
    stage("model", export)
    if "model" in results["errors"]:  # every later stage runs the exported models: each would fail in turn
        sys.exit("the model export failed (errors.model in the JSON): stopped before any stage ran without a model")
    model_info = results.get("model") or {}
    fp32, fp16 = Path(model_info.get("fp32", "")), Path(model_info.get("fp16", ""))
    if on_gpu:  # onnxruntime lists CUDA whether or not its libraries load: every stage would then run on the CPU
        stage("cuda", lambda: on_provider(create_session(fp16, [CUDA, CPU], 1), CUDA).get_providers())
        if "cuda" in results["errors"]:
            sys.exit("the CUDA provider does not run the model: stopped before spending the run on CPU figures")
    size = args.input_size
    best = fp16 if on_gpu else fp32
    stage("raw", lambda: raw_ort(best, ints(args.raw_sizes), size, args.raw_seconds, provider,
                                 {"nhwc": {"prefer_nhwc": "1"}, "nchw": {"prefer_nhwc": "0"},
                                  "nhwc_fixed": {"prefer_nhwc": "1"}}, fixed=("nhwc_fixed",)))
    stage("eager", lambda: eager(holder["model"], ints(args.eager_sizes), size, args.raw_seconds, device))
    holder.clear()
    release_gpu_memory()

    width, height = (int(v) for v in args.upload.split("x"))
    bodies = [encode(synthetic_photo(width, height, seed)) for seed in range(8)]
    concurrencies = ints(args.concurrency)
    per_connection = args.client_pool == "per-connection"
    buckets = sorted({*[2**i for i in range(8) if 2**i < args.max_batch], args.max_batch})
    context = multiprocessing.get_context("spawn")  # the parent holds CUDA and threads: no fork
    answer = args.workdir / "answer.png"
    answer.unlink(missing_ok=True)
    masks = MaskReference()  # the first service configuration's labels: every later one is compared with them
    with ProcessPoolExecutor(args.clients, mp_context=context) as pool:
        run = lambda env, conc, first=None, **kw: service_config(  # noqa: E731
            pool, fp32, bodies, conc, args.seconds, args.clients, {**base, **env}, first,
            per_connection=per_connection, ready_timeout=stages.ready_timeout(args.ready_timeout), masks=masks,
            **kw)
        stage("service", lambda: run({}, concurrencies, buckets, gil_from=None if "gil" in skip else 32,
                                     keep_answer=answer))
        for name, env in variants.items():
            stage(f"variant_{name}", lambda env=env: run(env, ints(args.variant_concurrency)))
        stage("fp32", lambda: run({"SEGMENT_PRECISION": "fp32"}, [32]))

    stage("raw_fp32", lambda: raw_ort(fp32, [8, 16], size, args.raw_seconds, provider, {"nhwc": {}}))
    stage("two_threads", lambda: {n: two_threads(best, n, size, args.raw_seconds, provider) for n in (8, 16)})
    if on_gpu:  # a CUDA graph capture that crashes takes only its own process, and this stage, with it
        stage("bound", lambda: in_child(bound_stage, best, size, args.raw_seconds))
    release_gpu_memory()

    with ProcessPoolExecutor(args.clients, mp_context=context) as pool:
        run = lambda env, conc, first=None, **kw: service_config(  # noqa: E731
            pool, fp32, bodies, conc, args.seconds, args.clients, {**base, **env}, first,
            per_connection=per_connection, ready_timeout=stages.ready_timeout(args.ready_timeout), masks=masks,
            **kw)
        stage("off", lambda: run({"SEGMENT_MAX_BATCH_SIZE": "1"}, concurrencies))
        diag = ints(args.diag_concurrency)
        stage("null", lambda: null_ceiling(pool, bodies, answer.read_bytes() if answer.exists()
                                           else label_like_png(width, height), diag, args.seconds, args.clients,
                                           args.workdir))
        stage("multi", lambda: multi_process(pool, fp32, bodies, ints(args.multi_processes), diag, args.seconds,
                                             args.clients, base, per_connection,
                                             stages.ready_timeout(args.ready_timeout)))
        stage("before", lambda: run({"SEGMENT_FIXED_SHAPES": "off", "SEGMENT_CONCURRENT_BATCHES": "1",
                                     "SEGMENT_CUDA_OPTIONS": "prefer_nhwc=0", "SEGMENT_MAX_BATCH_SIZE": "8"},
                                    [8, 32]))
    failures = mask_failures(results)
    if failures:
        results["errors"]["masks"] = failures
    stages.save()
    write_section(args.out / "BENCHMARKS.md", "gpu", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
