"""Where the outputs of a `segment` run go: the images found under the inputs, one output file each (names that
would collide keep their extension), whether an output is already done (resume), atomic writes, and one job (a file
segmented and its output stored). The record of what a folder's files were made with is `clients.batch_record`;
the atomic writes, `clients.batch_writes`."""

from __future__ import annotations

import argparse
import json
import stat
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clients.batch_writes import write_atomic
from service.client import (
    SegmentApiError,
    SegmentCertificateError,
    SegmentClientError,
    SegmentConnectionError,
    SegmentResponseError,
    SegmentResult,
    SegmentTlsError,
)
from service.core.errors import DecodeError
from service.core.output_kinds import OUTPUT_KINDS, Encoding

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"})

# JSON fields that differ on every request; leaving them out makes the files reproducible (and resumable runs
# comparable with fresh ones).
_VOLATILE_FIELDS = ("id", "timing_ms")
CONNECTION_ERROR = SegmentConnectionError.code  # the failure code of a file that could not reach the server
# ... as no TLS connection can be made (its certificate is not accepted, or it does not speak TLS): no other file can
TLS_ERRORS = frozenset({SegmentCertificateError.code, SegmentTlsError.code})
# The failure code of a file answered by another model than the run's (the server's model changed during the run)
MODEL_CHANGED = "model_changed"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


class Backend(Protocol):
    def segment(self, data: bytes, output: str, *, alpha: float | None = None, format: str | None = None,
                tolerance: float | None = None, min_area: float | None = None, crf: bool = False,
                resolution: int | str | None = None) -> SegmentResult: ...


@dataclass(frozen=True)
class Failure:
    source: Path
    code: str
    message: str


@dataclass(frozen=True)
class Lowered:
    """A file written at a lower resolution than `--resolution`: the most the server gives it (more would need more
    tiles than it runs for one image)."""

    source: Path
    resolution: int


def segment_at_most(backend: Backend, data: bytes, args: argparse.Namespace) -> tuple[SegmentResult, int | None]:
    """The answer for one file, and the resolution it was lowered to (None: as asked). A file whose `--resolution`
    needs more tiles than the server runs (422 `too_many_tiles`) is segmented at the highest it names, as the web
    page's "full resolution" is: `native` over a folder of photos gives each the most detail the server allows."""
    options = {"alpha": args.alpha, "format": args.format, "tolerance": args.tolerance, "min_area": args.min_area,
               "crf": args.crf}
    try:
        return backend.segment(data, args.output, **options), None
    except SegmentApiError as exc:
        if exc.code != "too_many_tiles" or exc.max_resolution is None:
            raise
        return backend.segment(data, args.output, resolution=exc.max_resolution, **options), exc.max_resolution


class PlanError(Exception):
    """Inputs and --out that cannot be mapped to output files without losing one; the run stops before writing."""


class NameClash(PlanError):
    """Inputs that would be written to the same output file: the same relative path under two inputs, or names
    that differ only in case, which a case-insensitive filesystem (macOS, Windows, many mounts) takes for one."""

    def __init__(self, clashes: dict[Path, list[Path]], case_only: bool = False) -> None:
        lines = [f"  {', '.join(map(str, sources))} -> {target}" for target, sources in clashes.items()]
        what = ("names that differ only in case would be written to one output file on a case-insensitive "
                "filesystem; rename one, or give them separate --out folders:") if case_only else \
            "the same relative path under two inputs would be written to one output file; give them separate " \
            "--out folders:"
        super().__init__(what + "\n" + "\n".join(lines))
        self.clashes = clashes


class OutputOverInput(PlanError):
    """An output file would be an input image, or --out is an input folder (whose outputs a rerun would read
    back as inputs)."""

    def __init__(self, out: Path, overwritten: list[Path]) -> None:
        what = "is an input folder: a rerun would read its outputs back as inputs" if not overwritten else \
            "would write over input images:\n" + "\n".join(f"  {path}" for path in overwritten)
        super().__init__(f"--out {out} {what}; use another --out")
        self.overwritten = overwritten


def output_encoding(output: str, fmt: str | None) -> Encoding:
    """How an output kind asked for in format `fmt` is written (None, or a format the kind is not written in, which
    the service ignores: its default)."""
    kind = OUTPUT_KINDS[output]
    formats = {e.format: e for e in kind.encodings}
    return formats.get(fmt, kind.encodings[0])


def output_suffix(output: str, fmt: str | None) -> str:
    """The file extension for an output kind in format `fmt` (see `output_encoding`)."""
    return output_encoding(output, fmt).suffix


def discover(inputs: Iterable[Path], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image under the inputs, sorted, no duplicates. Files
    under `exclude` (the output folder) are left out where it lies inside an input folder: a rerun must not
    segment its own outputs."""
    found: dict[Path, Path] = {}
    skip = exclude.resolve() if exclude is not None else None
    for root in inputs:
        if root.is_dir():
            base = root.resolve()
            inner = skip if skip is not None and skip != base and skip.is_relative_to(base) else None
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    resolved = path.resolve()
                    if inner is None or not resolved.is_relative_to(inner):
                        found.setdefault(resolved, path.relative_to(root))
        else:  # an explicit file is taken whatever its name; a missing one fails as a read error later
            found.setdefault(root.resolve(), Path(root.name))
    return sorted(((src, rel) for src, rel in found.items()), key=lambda item: str(item[1]))


def plan(inputs: Iterable[Path], out: Path, suffix: str, answer_suffixes: Iterable[str] = ()) -> list[Job]:
    """Map inputs to output paths, one file each. Names that would collide (a.jpg, a.png) keep their extension:
    a.jpg.png, a.png.png. Names are compared as a case-insensitive filesystem does (see `same_file_key`), so
    that no two outputs are one file there. `NameClash` when the same relative path comes from two inputs (or
    two differing only in case); `OutputOverInput` when an output, under `suffix` or one of the
    `answer_suffixes` it may be stored under (see `answer_target`), would be an input image, or when `out` is an
    input folder."""
    inputs = list(inputs)
    if any(root.is_dir() and root.resolve() == out.resolve() for root in inputs):
        raise OutputOverInput(out, [])
    files = discover(inputs, exclude=out)
    rels = dict(files)
    targets = {src: rel.with_suffix(suffix) for src, rel in files}
    # A kept extension can collide in turn (a.jpg -> a.jpg.png, which a.jpg.png maps to): repeat until nothing
    # changes. Each file is renamed at most once, and full names differ unless the relative paths are equal.
    while clashes := _clashes(targets):
        renamed = {src: rels[src].with_name(rels[src].name + suffix) for srcs in clashes.values() for src in srcs}
        if all(targets[src] == target for src, target in renamed.items()):
            case_only = all(len({rels[src] for src in sources}) > 1 for sources in clashes.values())
            raise NameClash({out / rels[sources[0]].with_suffix(suffix): sources for sources in clashes.values()},
                            case_only)
        targets.update(renamed)
    jobs = [Job(src, out / targets[src]) for src, _ in files]
    # An input given as a file inside --out (`segment x.png --out .`): its output would be the input itself,
    # skipped as "already done", or replaced by its mask under --overwrite.
    suffixes = {suffix, *answer_suffixes}
    inputs_keys = {same_file_key(src) for src in rels}  # x.PNG is x.png's own file on a case-insensitive --out
    overwritten = sorted({job.source for job in jobs for s in suffixes
                          if same_file_key(job.target.with_suffix(s).resolve()) in inputs_keys})
    if overwritten:
        raise OutputOverInput(out, overwritten)
    return jobs


def same_file_key(path: Path) -> str:
    """`path` as a case-insensitive filesystem compares names: case folded, and Unicode-normalised as macOS's
    are (an é typed as one character or as e plus an accent). Two paths with one key are one file there."""
    # Canonical caseless matching (Unicode 3.13, D145): NFD, case fold, NFD again.
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", str(path)).casefold())


def _clashes(targets: dict[Path, Path]) -> dict[str, list[Path]]:
    """The targets claimed by more than one source, with those sources; targets that differ only in case are one
    (see `same_file_key`): on macOS, Windows and many mounts, the second would overwrite the first."""
    owners: dict[str, list[Path]] = defaultdict(list)
    for src, target in targets.items():
        owners[same_file_key(target)].append(src)
    return {key: sources for key, sources in owners.items() if len(sources) > 1}


def is_done(job: Job, suffixes: Iterable[str] = ()) -> bool:
    """An output exists only once complete (written under a temporary name, then renamed). `suffixes`: others
    the answer may have come in (see `answer_target`)."""
    return any(_complete(job.target.with_suffix(s)) for s in (job.target.suffix, *suffixes))


def _complete(path: Path) -> bool:
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0  # a folder of that name is no output


def output_paths(job: Job, suffixes: Iterable[str] = ()) -> list[Path]:
    """Every path the output of `job` may be stored under (see `is_done`, `answer_target`)."""
    return list(dict.fromkeys(job.target.with_suffix(s) for s in (job.target.suffix, *suffixes)))


def remove_outputs(jobs: Iterable[Job], suffixes: Iterable[str] = ()) -> None:
    """Delete the outputs of `jobs` that exist (`--overwrite`), before the new run is recorded: an interrupted or
    failing run then leaves each file new or absent, and a resumed run redoes the absent ones, never skipping a file
    that still holds the previous run's output. An OSError when one cannot be removed."""
    suffixes = tuple(suffixes)
    for job in jobs:
        for path in output_paths(job, suffixes):
            path.unlink(missing_ok=True)


def answer_target(target: Path, result: SegmentResult) -> Path:
    """`target` with the suffix of the answer's media type: an overlay asked for as JPEG is PNG when a side
    exceeds JPEG's limit, and a .jpg file must not hold PNG bytes. An answer in none of the kind's media types (a
    proxy's HTML page) raises `SegmentResponseError`: stored, it would pass for an output and be skipped by reruns."""
    kind = OUTPUT_KINDS[result.output]
    for encoding in kind.encodings:
        if encoding.media_type == result.media_type:
            return target.with_suffix(encoding.suffix)
    raise SegmentResponseError(result.status, result.media_type, result.content,
                               f"{kind.name} ({', '.join(e.media_type for e in kind.encodings)})")


def payload(result: SegmentResult) -> bytes:
    """The bytes to store: images as returned, JSON without the per-request fields, pretty-printed."""
    if not result.is_json:
        return result.content
    body = {k: v for k, v in result.json().items() if k not in _VOLATILE_FIELDS}
    return (json.dumps(body, indent=1) + "\n").encode()


def model_changed(result: SegmentResult, run_sha256: str | None) -> str | None:
    """Why `result` must not be stored in a run of the model of sha256 `run_sha256`: it names another model. None
    when it names the run's, or when either is not told (a server older than the answer's model header)."""
    answered = result.model_sha256
    if not answered or not run_sha256 or answered == run_sha256.lower():
        return None
    # A digest's first 12 digits tell two files apart, as in the run record's conflicts.
    return (f"answered by model sha256 {answered[:12]}, not the run's {run_sha256[:12]} (the server's model "
            "changed during the run); not written")


def run_job(backend: Backend, job: Job, args: argparse.Namespace,
            model_sha256: str | None = None) -> Failure | Lowered | None:
    """Segment one file and store the output; a failure is returned, never raised, and so is a file written at a
    lower resolution than asked (`Lowered`). `model_sha256`: the run's model (`clients.batch_record`): an answer
    that names another is not stored, but failed as `MODEL_CHANGED`."""
    try:
        data = job.source.read_bytes()
    except OSError as exc:
        return Failure(job.source, "read_error", str(exc))
    try:
        result, lowered = segment_at_most(backend, data, args)
        target, body = answer_target(job.target, result), payload(result)
        if (changed := model_changed(result, model_sha256)) is not None:
            # Stored, it would be skipped as done by every rerun: a file that holds another model's answer.
            return Failure(job.source, MODEL_CHANGED, changed)
    except SegmentApiError as exc:
        return Failure(job.source, exc.code, exc.message)
    except SegmentConnectionError as exc:  # see `clients.batch._count`: both codes stop the run
        return Failure(job.source, exc.code, str(exc))
    except SegmentClientError as exc:  # e.g. `invalid_response`: a proxy's page where the answer was due
        return Failure(job.source, exc.code, str(exc))
    except DecodeError as exc:  # local mode: the code the service would answer with
        return Failure(job.source, exc.code, exc.message)
    except Exception as exc:  # a bug, still reported per file rather than killing the run
        return Failure(job.source, "error", repr(exc))
    try:
        write_atomic(target, body)
    except OSError as exc:
        return Failure(job.source, "write_error", str(exc))
    return None if lowered is None else Lowered(job.source, lowered)
