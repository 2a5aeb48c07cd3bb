"""`segment`: segment a folder of images, through a running service or in-process, resumably.

    segment images/ --out masks/ --output color --server http://localhost:8000 -j 4
    segment images/ --out masks/ --output stats --local model.onnx

- Inputs are files and folders (searched recursively for image files); outputs mirror the folder layout under
  `--out`, with the file suffix of the output kind (`segment --help` lists the kinds and their suffixes). Names
  that would collide keep their extension (a.jpg, a.png: a.jpg.png, a.png.png); the same relative path under two
  inputs (in1/x.jpg, in2/x.jpg) stops the run before anything is written (exit 2). An `--out` inside an input
  folder is not read back as input; an `--out` that is an input folder, or an output that would be an input
  image (`segment x.png --out .`), stops the run before anything is written (exit 2).
- An overlay asked for as JPEG comes back as PNG when a side exceeds JPEG's 65,500 px; it is stored as `.png`.
- Every output is written to a temporary name and renamed into place, so an existing output is always complete:
  a rerun skips it (resume). `--out` records the output kind and options of the run (`.segment-run.json`); a
  rerun asking for others stops (exit 2) rather than skip files that hold something else. `--overwrite` redoes
  everything.
- Ctrl-C drops the files not yet started, lets the running ones finish, prints the summary and exits 130.
- A file that fails (corrupt, unsupported, refused by the server) is reported and skipped; the run goes on. The
  summary at the end lists every failure, and the exit status is 1 when anything failed.
- `--local` runs onnxruntime in this process through `service.local`, i.e. the service's own decode, letterbox,
  inference, unletterbox and encoders: the files are the same as the server's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from clients.batch_outputs import (
    Job,
    PlanError,
    answer_target,
    is_done,
    options_conflict,
    output_suffix,
    plan,
    record_options,
    write_atomic,
)
from service.client import (
    OUTPUTS,
    OVERLAY_FORMATS,
    SegmentApiError,
    SegmentClient,
    SegmentClientError,
    SegmentResult,
)
from service.core.errors import DecodeError
from service.core.output_kinds import OUTPUT_KINDS

# JSON fields that differ on every request; leaving them out makes the files reproducible (and resumable runs
# comparable with fresh ones).
_VOLATILE_FIELDS = ("id", "timing_ms")
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)
SIGNAL_CHECK_S = 0.2  # how soon a Ctrl-C taken by a worker thread stops the run


class Backend(Protocol):
    def segment(self, data: bytes, output: str, *, alpha: float | None = None, format: str | None = None,
                tolerance: float | None = None, min_area: float | None = None, crf: bool = False) -> SegmentResult: ...


@dataclass(frozen=True)
class Failure:
    source: Path
    code: str
    message: str


def run_options(args: argparse.Namespace) -> dict[str, object]:
    """What decides the content of every output file; recorded in --out so that a rerun can tell."""
    # `crf` only when asked for: a folder written before the flag existed holds masks without it, and is resumed.
    return {"output": args.output, "format": args.format, "alpha": args.alpha, "tolerance": args.tolerance,
            "min_area": args.min_area, **({"crf": True} if args.crf else {})}


def payload(result: SegmentResult) -> bytes:
    """The bytes to store: images as returned, JSON without the per-request fields, pretty-printed."""
    if not result.is_json:
        return result.content
    body = {k: v for k, v in result.json().items() if k not in _VOLATILE_FIELDS}
    return (json.dumps(body, indent=1) + "\n").encode()


def run_job(backend: Backend, job: Job, args: argparse.Namespace) -> Failure | None:
    """Segment one file and store the output; a failure is returned, never raised."""
    try:
        data = job.source.read_bytes()
    except OSError as exc:
        return Failure(job.source, "read_error", str(exc))
    try:
        result = backend.segment(data, args.output, alpha=args.alpha, format=args.format,
                                 tolerance=args.tolerance, min_area=args.min_area, crf=args.crf)
    except SegmentApiError as exc:
        return Failure(job.source, exc.code, exc.message)
    except SegmentClientError as exc:
        return Failure(job.source, "connection_error", str(exc))
    except DecodeError as exc:  # local mode: the code the service would answer with
        return Failure(job.source, exc.code, exc.message)
    except Exception as exc:  # a bug, still reported per file rather than killing the run
        return Failure(job.source, "error", repr(exc))
    try:
        write_atomic(answer_target(job.target, result), payload(result))
    except OSError as exc:
        return Failure(job.source, "write_error", str(exc))
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="segment", description="Segment image files through the service (--server) or in-process (--local).",
        epilog=_kinds_help() + "\n\n" + _RULES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder (layout mirrors the inputs)")
    parser.add_argument("--output", choices=OUTPUTS, default="color",
                        help="what to produce (default color; the kinds are listed below)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="URL", help="base URL of a running segment-serve")
    where.add_argument("--local", metavar="MODEL", type=Path, help="ONNX model to run in this process")
    parser.add_argument("--api-key", default=os.environ.get("SEGMENT_API_KEY"),
                        help="X-API-Key for --server (default $SEGMENT_API_KEY)")
    parser.add_argument("-j", "--jobs", type=int, default=4, help="requests in flight / worker threads")
    parser.add_argument("--alpha", type=_unit_float, default=None, help="overlay opacity 0..1")
    parser.add_argument("--format", choices=OVERLAY_FORMATS, default=None,
                        help=f"overlay format (default {OVERLAY_FORMATS[0]})")
    parser.add_argument("--tolerance", type=_non_negative_float, default=None, help="polygon simplification, pixels")
    parser.add_argument("--min-area", type=_non_negative_float, default=None,
                        help="drop polygons smaller than this, pixels")
    parser.add_argument("--crf", action="store_true",
                        help="refine each mask with the dense CRF (the crf extra, on the server or, --local, here)")
    parser.add_argument("--providers", default="auto", help="--local: onnxruntime providers (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="--local: onnxruntime intra-op threads")
    parser.add_argument("--wait", type=float, default=30.0, help="--server: seconds to wait for it to be ready")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo files whose output already exists, also when made with other options")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


_RULES = """\
outputs:
  Names that would collide keep their extension (a.jpg, a.png: a.jpg.png, a.png.png). The same relative path
  under two inputs (in1/x.jpg, in2/x.jpg) stops the run before anything is written: use separate --out folders.
  So does an --out that is an input folder, or an output file that would be an input image.
  A rerun skips the files already written, unless it asks for another --output or other options than the run
  recorded in --out: then it stops, and --overwrite redoes everything. An overlay too large for JPEG is stored
  as .png. Ctrl-C stops after the files in progress and exits 130.
exit status: 0 all written, 1 some files failed, 2 cannot start, 130 interrupted"""


def _kinds_help() -> str:
    """The output kinds for `--help`, from the service's table: name, file suffixes (default first), description."""
    rows = [(kind.name, " ".join(e.suffix for e in kind.encodings), kind.description)
            for kind in OUTPUT_KINDS.values()]
    name_width, suffix_width = (max(len(row[i]) for row in rows) for i in (0, 1))
    lines = [f"  {name:<{name_width}}  {suffix:<{suffix_width}}  {text}" for name, suffix, text in rows]
    return "output kinds (--output) and their file suffixes:\n" + "\n".join(lines)


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    """As the API bounds `tolerance` and `min_area`: refused here, before a run that every file would fail (and
    whose options, recorded in --out, a corrected rerun would then conflict with)."""
    value = float(text)
    if not value >= 0.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def serve_extra_missing(prog: str, what: str, exc: ModuleNotFoundError) -> str:
    """The one line for a client-only install asked for what needs the serve extra (onnxruntime, OpenCV)."""
    # The spelling of the README's install commands, so that the fix can be pasted.
    return f"{prog}: {what} needs the serve extra (module {exc.name!r} is missing): pip install '.[serve]'"


def _backend(args: argparse.Namespace) -> tuple[Backend, SegmentClient | None]:
    if args.local is not None:
        from service.core import crf
        from service.local import LocalSegmenter  # onnxruntime only when asked for

        if args.crf and not crf.available():
            raise RuntimeError("--crf --local needs the crf extra here: pip install '.[crf]'")
        return LocalSegmenter(args.local, providers=args.providers, threads=args.threads), None
    client = SegmentClient(args.server, api_key=args.api_key, max_connections=args.jobs)
    return client, client


def _summary(total: int, skipped: int, outcomes: list[Failure | None], interrupted: bool) -> str:
    failures = [outcome for outcome in outcomes if outcome is not None]
    written = len(outcomes) - len(failures)
    lines = [f"segment: {written} written, {skipped} skipped (already done), {len(failures)} failed, {total} total"]
    if interrupted:
        lines[0] += f"; interrupted, {total - skipped - len(outcomes)} not done"
    lines += [f"  FAILED {f.source}: {f.code}: {f.message}" for f in sorted(failures, key=lambda f: str(f.source))]
    return "\n".join(lines)


def run_jobs(backend: Backend, todo: list[Job], args: argparse.Namespace) -> tuple[list[Failure | None], bool]:
    """Run `todo` on `args.jobs` threads: the outcome of every job that ran, and whether Ctrl-C stopped the run."""
    pool = ThreadPoolExecutor(args.jobs, thread_name_prefix="segment")
    futures: list[Future[Failure | None]] = []
    interrupted = False
    try:
        with tqdm(total=len(todo), unit="img", disable=args.no_progress or None, file=sys.stderr) as bar:
            for job in todo:
                futures.append(pool.submit(run_job, backend, job, args))
            failed, pending = 0, set(futures)
            while pending:
                # Python runs signal handlers on the main thread only, and only once it wakes: a Ctrl-C the
                # kernel hands to a worker thread would wait for the next file to finish (minutes for a slow
                # server) if this wait had no timeout.
                done, pending = wait(pending, timeout=SIGNAL_CHECK_S, return_when=FIRST_COMPLETED)
                for future in done:
                    failure = future.result()
                    if failure is not None:
                        failed += 1
                        bar.write(f"failed: {failure.source}: {failure.code}: {failure.message}", file=sys.stderr)
                        bar.set_postfix(failed=failed)
                    bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Leaving a pool waits for every queued job: on Ctrl-C drop those and wait only for the running ones
        # (an output is whole or absent, see write_atomic).
        pool.shutdown(cancel_futures=True)
    return [future.result() for future in futures if not future.cancelled()], interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segment`; returns the exit status (0 ok, 1 some files failed, 2 cannot start, 130 Ctrl-C)."""
    args = parse_args(argv)
    suffixes = [encoding.suffix for encoding in OUTPUT_KINDS[args.output].encodings]
    try:
        jobs = plan(args.inputs, args.out, output_suffix(args.output, args.format), suffixes)
    except PlanError as exc:  # nothing written yet
        print(f"segment: {exc}", file=sys.stderr)
        return 2
    if not jobs:
        print(f"segment: no image files under {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 2
    options = run_options(args)
    conflict = None if args.overwrite else options_conflict(args.out, options)
    if conflict is not None:
        print(f"segment: {conflict}; rerun with --overwrite to redo every file, or use another --out",
              file=sys.stderr)
        return 2
    todo = jobs if args.overwrite else [job for job in jobs if not is_done(job, suffixes)]
    skipped = len(jobs) - len(todo)
    try:
        backend, client = _backend(args)
    except ModuleNotFoundError as exc:  # --local on a client-only install: no onnxruntime or OpenCV here
        print(serve_extra_missing("segment", "--local", exc), file=sys.stderr)
        return 2
    except Exception as exc:  # model missing/invalid: nothing can succeed
        print(f"segment: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        if client is not None and todo and not _server_reachable(client, args.wait):
            print(f"segment: {args.server} is not reachable or not ready", file=sys.stderr)
            return 2
        if client is not None and todo and (refused := _key_refused(client)) is not None:
            print(f"segment: {args.server} refused the API key (--api-key or $SEGMENT_API_KEY): {refused}",
                  file=sys.stderr)
            return 2
        if not record_options(args.out, options):
            return 2
        outcomes, interrupted = run_jobs(backend, todo, args)
    except KeyboardInterrupt:  # while waiting for the server: nothing ran yet
        print("segment: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        if client is not None:
            client.close()
    print(_summary(len(jobs), skipped, outcomes, interrupted), file=sys.stderr)
    if interrupted:
        return INTERRUPTED
    return 1 if any(outcomes) else 0


def _key_refused(client: SegmentClient) -> str | None:
    """The server's message when it refuses this client's API key (asked once, of `GET /classes`), else None:
    otherwise every file would fail on its own with the same 401."""
    try:
        client.classes()
    except SegmentApiError as exc:
        return exc.message if exc.code == "unauthorized" else None
    except SegmentClientError:
        return None  # the files' own requests report what is wrong
    return None


def _server_reachable(client: SegmentClient, timeout: float = 30.0) -> bool:
    try:
        client.wait_ready(timeout=timeout)
    except SegmentClientError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
