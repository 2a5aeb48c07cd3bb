"""`segment`: segment a folder of images, through a running service or in-process, resumably.

    segment images/ --out masks/ --output color --server http://localhost:8000 -j 4
    segment images/ --out masks/ --output stats --local model.onnx

- Inputs are files and folders (searched recursively for image files); outputs mirror the folder layout under
  `--out`, with the file suffix of the output kind (`segment --help` lists the kinds and their suffixes).
- Every output is written to a temporary name and renamed into place, so an existing output is always complete:
  a rerun skips it (resume). `--overwrite` redoes everything.
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
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

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

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"})
# JSON fields that differ on every request; leaving them out makes the files reproducible (and resumable runs
# comparable with fresh ones).
_VOLATILE_FIELDS = ("id", "timing_ms")
_PART_SUFFIX = ".part"


class Backend(Protocol):
    def segment(self, data: bytes, output: str, *, alpha: float | None = None, format: str | None = None,
                tolerance: float | None = None, min_area: float | None = None) -> SegmentResult: ...


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass(frozen=True)
class Failure:
    source: Path
    code: str
    message: str


def output_suffix(output: str, fmt: str | None) -> str:
    """The file extension for an output kind in format `fmt` (None, or a format the kind is not written in: its
    default)."""
    kind = OUTPUT_KINDS[output]
    formats = {e.format: e for e in kind.encodings}
    return formats.get(fmt, kind.encodings[0]).suffix


def discover(inputs: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image under the inputs, sorted, no duplicates."""
    found: dict[Path, Path] = {}
    for root in inputs:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    found.setdefault(path.resolve(), path.relative_to(root))
        else:  # an explicit file is taken whatever its name; a missing one fails as a read error later
            found.setdefault(root.resolve(), Path(root.name))
    return sorted(((src, rel) for src, rel in found.items()), key=lambda item: str(item[1]))


def plan(inputs: Iterable[Path], out: Path, suffix: str) -> list[Job]:
    """Map inputs to output paths. Names that would collide (a.jpg, a.png) keep their extension: a.jpg.png."""
    files = discover(inputs)
    stems: dict[Path, int] = {}
    for _, rel in files:
        key = rel.with_suffix(suffix)
        stems[key] = stems.get(key, 0) + 1
    jobs = []
    for src, rel in files:
        target = rel.with_suffix(suffix)
        if stems[target] > 1:
            target = rel.with_name(rel.name + suffix)
        jobs.append(Job(src, out / target))
    return jobs


def is_done(job: Job) -> bool:
    """An output exists only once complete (written under a temporary name, then renamed)."""
    try:
        return job.target.stat().st_size > 0
    except OSError:
        return False


def payload(result: SegmentResult) -> bytes:
    """The bytes to store: images as returned, JSON without the per-request fields, pretty-printed."""
    if not result.is_json:
        return result.content
    body = {k: v for k, v in result.json().items() if k not in _VOLATILE_FIELDS}
    return (json.dumps(body, indent=1) + "\n").encode()


def write_atomic(target: Path, data: bytes) -> None:
    """Write to `<target>.part`, flush to disk, then rename over `target` (atomic on POSIX)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + _PART_SUFFIX)
    with open(part, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, target)


def run_job(backend: Backend, job: Job, args: argparse.Namespace) -> Failure | None:
    """Segment one file and store the output; a failure is returned, never raised."""
    try:
        data = job.source.read_bytes()
    except OSError as exc:
        return Failure(job.source, "read_error", str(exc))
    try:
        result = backend.segment(data, args.output, alpha=args.alpha, format=args.format,
                                 tolerance=args.tolerance, min_area=args.min_area)
    except SegmentApiError as exc:
        return Failure(job.source, exc.code, exc.message)
    except SegmentClientError as exc:
        return Failure(job.source, "connection_error", str(exc))
    except DecodeError as exc:  # local mode: the code the service would answer with
        return Failure(job.source, exc.code, exc.message)
    except Exception as exc:  # a bug, still reported per file rather than killing the run
        return Failure(job.source, "error", repr(exc))
    try:
        write_atomic(job.target, payload(result))
    except OSError as exc:
        return Failure(job.source, "write_error", str(exc))
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="segment", description="Segment image files through the service (--server) or in-process (--local).",
        epilog=_kinds_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--tolerance", type=float, default=None, help="polygon simplification, pixels")
    parser.add_argument("--min-area", type=float, default=None, help="drop polygons smaller than this")
    parser.add_argument("--providers", default="auto", help="--local: onnxruntime providers (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="--local: onnxruntime intra-op threads")
    parser.add_argument("--wait", type=float, default=30.0, help="--server: seconds to wait for it to be ready")
    parser.add_argument("--overwrite", action="store_true", help="redo files whose output already exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


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


def _backend(args: argparse.Namespace) -> tuple[Backend, SegmentClient | None]:
    if args.local is not None:
        from service.local import LocalSegmenter  # onnxruntime only when asked for

        return LocalSegmenter(args.local, providers=args.providers, threads=args.threads), None
    client = SegmentClient(args.server, api_key=args.api_key, max_connections=args.jobs)
    return client, client


def _summary(total: int, skipped: int, failures: list[Failure]) -> str:
    done = total - skipped - len(failures)
    lines = [f"segment: {done} written, {skipped} skipped (already done), {len(failures)} failed, {total} total"]
    lines += [f"  FAILED {f.source}: {f.code}: {f.message}" for f in sorted(failures, key=lambda f: str(f.source))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segment`; returns the exit status (0 ok, 1 some files failed, 2 cannot start)."""
    args = parse_args(argv)
    jobs = plan(args.inputs, args.out, output_suffix(args.output, args.format))
    todo = jobs if args.overwrite else [job for job in jobs if not is_done(job)]
    skipped = len(jobs) - len(todo)
    if not jobs:
        print(f"segment: no image files under {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 2
    try:
        backend, client = _backend(args)
    except Exception as exc:  # model missing/invalid: nothing can succeed
        print(f"segment: cannot start: {exc}", file=sys.stderr)
        return 2
    failures: list[Failure] = []
    try:
        if client is not None and todo and not _server_reachable(client, args.wait):
            print(f"segment: {args.server} is not reachable or not ready", file=sys.stderr)
            return 2
        with (tqdm(total=len(todo), unit="img", disable=args.no_progress or None, file=sys.stderr) as bar,
              ThreadPoolExecutor(args.jobs, thread_name_prefix="segment") as pool):
            futures = [pool.submit(run_job, backend, job, args) for job in todo]
            for future in as_completed(futures):
                failure = future.result()
                if failure is not None:
                    failures.append(failure)
                    bar.write(f"failed: {failure.source}: {failure.code}: {failure.message}", file=sys.stderr)
                    bar.set_postfix(failed=len(failures))
                bar.update()
    finally:
        if client is not None:
            client.close()
    print(_summary(len(jobs), skipped, failures), file=sys.stderr)
    return 1 if failures else 0


def _server_reachable(client: SegmentClient, timeout: float = 30.0) -> bool:
    try:
        client.wait_ready(timeout=timeout)
    except SegmentClientError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
