"""Where the outputs of a `segment` run go: the images found under the inputs, one output file each (names that
would collide keep their extension), whether an output is already done (resume), atomic writes, and the record of
the output kind and options a folder's files were made with."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.client import SegmentResult
from service.core.output_kinds import OUTPUT_KINDS

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"})

_PART_SUFFIX = ".part"
_RUN_FILE = ".segment-run.json"  # in --out: the output kind and options its files were made with


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


class PlanError(Exception):
    """Inputs and --out that cannot be mapped to output files without losing one; the run stops before writing."""


class NameClash(PlanError):
    """Inputs that would be written to the same output file."""

    def __init__(self, clashes: dict[Path, list[Path]]) -> None:
        lines = [f"  {', '.join(map(str, sources))} -> {target}" for target, sources in clashes.items()]
        super().__init__("the same relative path under two inputs would be written to one output file; give "
                         "them separate --out folders:\n" + "\n".join(lines))
        self.clashes = clashes


class OutputOverInput(PlanError):
    """An output file would be an input image, or --out is an input folder (whose outputs a rerun would read
    back as inputs)."""

    def __init__(self, out: Path, overwritten: list[Path]) -> None:
        what = "is an input folder: a rerun would read its outputs back as inputs" if not overwritten else \
            "would write over input images:\n" + "\n".join(f"  {path}" for path in overwritten)
        super().__init__(f"--out {out} {what}; use another --out")
        self.overwritten = overwritten


def output_suffix(output: str, fmt: str | None) -> str:
    """The file extension for an output kind in format `fmt` (None, or a format the kind is not written in: its
    default)."""
    kind = OUTPUT_KINDS[output]
    formats = {e.format: e for e in kind.encodings}
    return formats.get(fmt, kind.encodings[0]).suffix


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
    a.jpg.png, a.png.png. `NameClash` when the same relative path comes from two inputs; `OutputOverInput` when
    an output, under `suffix` or one of the `answer_suffixes` it may be stored under (see `answer_target`),
    would be an input image, or when `out` is an input folder."""
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
            raise NameClash({out / rels[sources[0]].with_suffix(suffix): sources for sources in clashes.values()})
        targets.update(renamed)
    jobs = [Job(src, out / targets[src]) for src, _ in files]
    # An input given as a file inside --out (`segment x.png --out .`): its output would be the input itself,
    # skipped as "already done", or replaced by its mask under --overwrite.
    suffixes = {suffix, *answer_suffixes}
    overwritten = sorted({job.source for job in jobs for s in suffixes if job.target.with_suffix(s).resolve() in rels})
    if overwritten:
        raise OutputOverInput(out, overwritten)
    return jobs


def _clashes(targets: dict[Path, Path]) -> dict[Path, list[Path]]:
    """The targets claimed by more than one source, with those sources."""
    owners: dict[Path, list[Path]] = defaultdict(list)
    for src, target in targets.items():
        owners[target].append(src)
    return {target: sources for target, sources in owners.items() if len(sources) > 1}


def is_done(job: Job, suffixes: Iterable[str] = ()) -> bool:
    """An output exists only once complete (written under a temporary name, then renamed). `suffixes`: others
    the answer may have come in (see `answer_target`)."""
    return any(_complete(job.target.with_suffix(s)) for s in (job.target.suffix, *suffixes))


def _complete(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def answer_target(target: Path, result: SegmentResult) -> Path:
    """`target` with the suffix of the answer's media type: an overlay asked for as JPEG is PNG when a side
    exceeds JPEG's limit, and a .jpg file must not hold PNG bytes."""
    for encoding in OUTPUT_KINDS[result.output].encodings:
        if encoding.media_type == result.media_type:
            return target.with_suffix(encoding.suffix)
    return target


def options_conflict(out: Path, options: dict[str, object]) -> str | None:
    """Why the files in `out` may not be resumed with `options`, or None: the same options, or no run recorded."""
    try:
        recorded = json.loads((out / _RUN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # written atomically, so only a hand edit or a disk fault gets here
        return f"{out / _RUN_FILE} cannot be read ({exc})"
    if not isinstance(recorded, dict):
        return f"{out / _RUN_FILE} is not a record of a run"
    if recorded == options:
        return None
    changes = [f"--{key.replace('_', '-')} {_shown(recorded.get(key))} then, {_shown(options.get(key))} now"
               for key in {**recorded, **options} if recorded.get(key) != options.get(key)]  # a flag given once
    return f"{out} holds files made with other options ({'; '.join(changes) or 'unknown options'})"


def _shown(value: object) -> str:
    return "default" if value is None else str(value)


def write_atomic(target: Path, data: bytes) -> None:
    """Write to `<target>.part`, flush to disk, then rename over `target` (atomic on POSIX)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + _PART_SUFFIX)
    with open(part, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, target)


def record_options(out: Path, options: dict[str, object]) -> bool:
    """Write the run's options into --out (see `options_conflict`); False, said why, when it cannot be written."""
    try:
        write_atomic(out / _RUN_FILE, (json.dumps(options, indent=1) + "\n").encode())
    except OSError as exc:
        print(f"segment: cannot write to {out}: {exc}", file=sys.stderr)
        return False
    return True
