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
  a rerun skips it (resume), and removes the temporary files of runs killed mid-write (`clients.batch_writes`).
  `--out` records the output kind, options and model of the run (`.segment-run.json`, see
  `clients.batch_record`); a rerun asking for others, or with another model, stops (exit 2) rather than skip
  files that hold something else. `--overwrite` redoes everything: it deletes the old
  outputs before it records the new run, so that whatever stops it, each file is new or absent.
- Ctrl-C (also while the inputs are listed) starts no more files, lets the running ones finish, prints the
  summary and exits 130; a second Ctrl-C does not wait for them.
- A file that fails (corrupt, unsupported, refused by the server, or answered by another model than the run's, as
  when the server's model changes mid-run: `model_changed`) is reported and skipped; the run goes on. The
  summary at the end lists every failure, and the exit status is 1 when anything failed. After
  `--max-connection-failures` files in a row could not reach the server, the run stops (exit 2): the server is
  gone, and every other file would fail alike; so it does at once when the server's TLS certificate is not
  accepted, or the server does not speak TLS. A 503 is retried `--retries` times (the client's backoff).
- At most `--jobs` files are in progress at a time, and the run keeps counts and failures rather than an object
  per file: beyond the list of inputs, its memory does not grow with the number of files.
- `--local` runs onnxruntime in this process through `service.local`, i.e. the service's own decode, letterbox,
  inference, unletterbox and encoders: the files are the same as the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence

from tqdm import tqdm

from clients.batch_cli import parse_args, run_options
from clients.batch_outputs import (
    Backend,
    Job,
    PlanError,
    is_done,
    output_suffix,
    plan,
    remove_outputs,
    run_job,
)
from clients.batch_record import model_conflict, options_conflict, read_record, record_run, server_not_ready
from clients.batch_record import run_model as _model  # by this name, so that tests can stand in for it
from clients.batch_tally import Tally, count_outcome, summary
from clients.batch_writes import remove_stale_temps
from service.client import SegmentClient
from service.core.output_kinds import OUTPUT_KINDS

INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)
SIGNAL_CHECK_S = 0.2  # how soon a Ctrl-C taken by a worker thread stops the run


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
        return LocalSegmenter(args.local, providers=args.providers, threads=args.threads,
                              resolution=args.resolution), None
    client = SegmentClient(args.server, api_key=args.api_key, max_connections=args.jobs, retries=args.retries,
                           priority=args.priority, resolution=args.resolution)
    return client, client


def run_jobs(backend: Backend, todo: Iterable[Job], args: argparse.Namespace, tally: Tally,
             model_sha256: str | None = None) -> None:
    """Run `todo` on `args.jobs` threads, counting outcomes in `tally`; an answer from another model than
    `model_sha256` (the run's) is not stored (see `run_job`). Each thread takes the next job only when it
    is free, so at most `args.jobs` jobs are taken and unfinished at any time, however long `todo` is. A first
    Ctrl-C takes no more jobs and waits for those in progress; a second returns at once, leaving them behind (the
    threads are daemons: they do not hold up the interpreter's exit, as a ThreadPoolExecutor's would)."""
    jobs, stop, finished = iter(todo), threading.Event(), threading.Event()
    running = args.jobs

    def work(bar: tqdm) -> None:
        nonlocal running
        try:
            while not stop.is_set():
                with tally.lock:
                    job = next(jobs, None)
                    if job is None:
                        return
                    tally.in_progress += 1
                failure = run_job(backend, job, args, model_sha256)
                with tally.lock:
                    count_outcome(tally, failure, args, bar, stop)
        finally:
            with tally.lock:
                running -= 1
                if not running:
                    finished.set()

    presses = taken = 0
    with tqdm(total=tally.total - tally.skipped, unit="img", disable=args.no_progress or None,
              file=sys.stderr) as bar:
        # Started with Ctrl-C blocked: no thread is left half started, and the threads inherit the mask, so that
        # the kernel hands a Ctrl-C to the main thread, which it then wakes at once.
        with _sigint_blocked():
            for index in range(args.jobs):
                threading.Thread(target=work, args=(bar,), name=f"segment-{index}", daemon=True).start()
        while not finished.is_set():
            # A KeyboardInterrupt may come at any line here; counting presses and acting on them at the top of
            # the loop keeps the state whole whatever line it interrupted. (Not Thread.join: a join interrupted
            # by Ctrl-C marks a running thread as stopped, bpo-45274.)
            try:
                if presses > taken:
                    taken = presses
                    stop.set()
                    with tally.lock:
                        tally.interrupted, in_progress = True, tally.in_progress
                        tally.abandoned = in_progress if presses > 1 else 0
                    if presses > 1:
                        bar.write(f"segment: interrupted again: not waiting for the {in_progress} files in progress",
                                  file=sys.stderr)
                        return
                    bar.write(f"segment: interrupted: finishing the {in_progress} files in progress (Ctrl-C again "
                              "to stop at once)", file=sys.stderr)
                # Python runs signal handlers on the main thread only, once it wakes: the timeout bounds the wait
                # should a Ctrl-C still reach another thread.
                finished.wait(SIGNAL_CHECK_S)
            except KeyboardInterrupt:
                presses += 1


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held pending in this thread (and in the threads it starts) meanwhile, where the platform can."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segment`; returns the exit status (0 ok, 1 some files failed, 2 cannot start or the server
    cannot be reached, 130 Ctrl-C)."""
    args = parse_args(argv)
    suffixes = [encoding.suffix for encoding in OUTPUT_KINDS[args.output].encodings]
    stage: str | None = "while listing the inputs"  # what a Ctrl-C interrupts before the first file starts
    client: SegmentClient | None = None
    tally: Tally | None = None
    try:
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
        tally = Tally(len(jobs), len(jobs) - len(todo))
        stage = "while starting"
        started = _start(args)
        if isinstance(started, int):
            return started
        backend, client = started
        stage = f"while waiting for {args.server}" if client is not None else stage
        # Asked even when every file is done: "skipped (already done)" must mean done by this model.
        if client is not None and (why := server_not_ready(client, args.wait)) is not None:
            print(f"segment: {why}", file=sys.stderr)
            return 2
        model = _model(backend, client)
        if isinstance(model, str):
            print(f"segment: {model}", file=sys.stderr)
            return 2
        if _refused(model_conflict(args.out, recorded, model)):
            return 2
        if args.overwrite:
            stage = "while deleting the old outputs (--overwrite)"
            if not _removed(todo, suffixes):
                return 2
        if not record_run(args.out, options, model):
            return 2
        stage = "while removing the temporary files of earlier runs"
        remove_stale_temps({job.target.parent for job in jobs} | {args.out})
        stage = None
        run_jobs(backend, todo, args, tally, _run_sha256(model))
    except KeyboardInterrupt:
        if stage is not None or tally is None:
            print(f"segment: interrupted {stage}; no file was segmented", file=sys.stderr)
            return INTERRUPTED
        tally.interrupted = True  # a Ctrl-C run_jobs could not count (between its lines): a summary all the same
    finally:
        if client is not None:
            client.close()
    with tally.lock:  # files left in progress by a second Ctrl-C may still finish meanwhile
        if tally.fatal and not tally.interrupted:
            print(f"segment: stopped at once, as every file would fail alike: {tally.fatal.message}", file=sys.stderr)
        if tally.unreachable and not tally.interrupted:
            print(f"segment: stopped after {tally.connection_streak} files in a row could not reach {args.server}; "
                  "rerun to resume once it is back", file=sys.stderr)
        print(summary(tally), file=sys.stderr)
    if tally.interrupted:
        return INTERRUPTED
    return 2 if tally.unreachable or tally.fatal else 1 if tally.failures else 0


def _start(args: argparse.Namespace) -> tuple[Backend, SegmentClient | None] | int:
    """The backend (and the client when it is a server), or the exit status when there is none."""
    try:
        return _backend(args)
    except ModuleNotFoundError as exc:  # --local on a client-only install: no onnxruntime or OpenCV here
        print(serve_extra_missing("segment", "--local", exc), file=sys.stderr)
    except Exception as exc:  # model missing/invalid, bad URL: nothing can succeed
        print(f"segment: cannot start: {exc}", file=sys.stderr)
    return 2


def _run_sha256(model: dict[str, object]) -> str | None:
    """The sha256 of the run's model, which every answer is checked against; None when it was not told."""
    sha256 = model.get("sha256")
    return sha256 if isinstance(sha256, str) and sha256 else None


def _removed(todo: list[Job], suffixes: list[str]) -> bool:
    """Delete the old outputs of `todo` (see `remove_outputs`); False, said why, when one cannot be."""
    try:
        remove_outputs(todo, suffixes)
    except OSError as exc:
        print(f"segment: cannot delete an old output: {exc}", file=sys.stderr)
        return False
    return True


def _refused(conflict: str | None) -> bool:
    """Say why the run may not resume in --out (see `clients.batch_record`); False when it may."""
    if conflict is None:
        return False
    print(f"segment: {conflict}; rerun with --overwrite to redo every file, or use another --out", file=sys.stderr)
    return True


if __name__ == "__main__":
    sys.exit(main())
