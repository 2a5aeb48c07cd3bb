"""Benchmarks publish into docs/*.md between `<!-- tag:begin -->` / `<!-- tag:end -->` markers, so a rerun
replaces its own table and leaves the hand-written prose and the other benchmarks' tables alone."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, tag: str, text: str) -> None:
    """Replace the block marked `tag` in `path` with `text`, or append the block when it is not there yet."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = f"{old.rstrip()}\n\n{block}\n" if old.strip() else f"{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
