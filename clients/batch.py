"""`segment`: segment a folder of images, through a running service or in-process, resumably.

    segment images/ --out masks/ --output color --server http://localhost:8000 -j 4
    segment images/ --out masks/ --output stats --local model.onnx

- Inputs are files and folders (searched recursively for image files); outputs mirror the folder layout under
  `--out`, with the file suffix of the output kind (`segment --help` lists the kinds and their suffixes). Names
  that would collide keep their extension (a.jpg, a.png: a.jpg.png, a.png.png); the same relative path under two
  inputs (in1/x.jpg, in2/x.jpg) stops the run before anything is written (exit 2). Names that differ only in
  case collide as well (A.png, a.png), as they do on a case-insensitive filesystem (macOS, Windows). An `--out`
  inside an input folder is not read back as input; an `--out` that is an input folder, or an output that would
  be an input image (`segment x.png --out .`), stops the run before anything is written (exit 2).
- An overlay asked for as JPEG comes back as PNG when a side exceeds JPEG's 65,500 px; it is stored as `.png`.
- Every output is written to a temporary name and renamed into place, so an existing output is always complete:
  a rerun skips it (resume). `--out` records the output kind, options and model of the run
  (`.segment-run.json`, see `clients.batch_record`); a rerun asking for others, or with another model, stops
  (exit 2) rather than skip files that hold something else. `--overwrite` redoes everything.
- Ctrl-C drops the files not yet started, lets the running ones finish, prints the summary and exits 130.
- A file that fails (corrupt, unsupported, refused by the server) is reported and skipped; the run goes on. The
  summary at the end lists every failure, and the exit status is 1 when anything failed.
- `--local` runs onnxruntime in this process through `service.local`, i.e. the service's own decode, letterbox,
  inference, unletterbox and encoders: the files are the same as the server's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from clients.batch_cli import parse_args, run_options
from clients.batch_outputs import Job, PlanError, answer_target, is_done, output_suffix, plan, write_atomic
from clients.batch_record import local_model, model_conflict, options_conflict, read_record, record_run, server_model
from service.client import SegmentApiError, SegmentClient, SegmentClientError, SegmentResult
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
    recorded = None if args.overwrite else read_record(args.out)
    if _refused(options_conflict(args.out, recorded, options)):
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
        # Asked even when every file is done: "skipped (already done)" must mean done by this model.
        if client is not None and not _server_reachable(client, args.wait):
            print(f"segment: {args.server} is not reachable or not ready", file=sys.stderr)
            return 2
        model = _model(backend, client)
        if isinstance(model, str):
            print(f"segment: {model}", file=sys.stderr)
            return 2
        if _refused(model_conflict(args.out, recorded, model)):
            return 2
        if not record_run(args.out, options, model):
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


def _refused(conflict: str | None) -> bool:
    """Say why the run may not resume in --out (see `clients.batch_record`); False when it may."""
    if conflict is None:
        return False
    print(f"segment: {conflict}; rerun with --overwrite to redo every file, or use another --out", file=sys.stderr)
    return True


def _model(backend: Backend, client: SegmentClient | None) -> dict[str, object] | str:
    """Which model makes this run's files (see `clients.batch_record`), or why it cannot be told. A server is asked
    once, with `GET /classes`, which also tells a refused API key at once: otherwise every file would fail on its
    own with the same 401."""
    if client is None:
        return local_model(backend.engine)  # type: ignore[attr-defined]  # a LocalSegmenter
    try:
        return server_model(client.classes())
    except SegmentApiError as exc:
        if exc.code == "unauthorized":
            return f"{client.url} refused the API key (--api-key or $SEGMENT_API_KEY): {exc.message}"
        return f"{client.url} does not say which model it serves: {exc.code}: {exc.message}"
    except SegmentClientError as exc:
        return f"{client.url} does not say which model it serves: {exc}"


def _server_reachable(client: SegmentClient, timeout: float = 30.0) -> bool:
    try:
        client.wait_ready(timeout=timeout)
    except SegmentClientError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
