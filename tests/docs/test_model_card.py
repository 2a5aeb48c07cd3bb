"""The model card's table of class fractions on real photographs is what the embedded model returns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.local import LocalSegmenter
from service.settings import EMBEDDED_MODEL
from testkit.photos import photo_path

CARD = Path(__file__).resolve().parents[2] / "models" / "README.md"


def _table() -> tuple[list[str], list[list[str]]]:
    text = CARD.read_text()
    block = text[text.index("<!-- photos:begin -->"):text.index("<!-- photos:end -->")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
    return rows[0], rows[2:]


def test_card_fractions_on_photographs_are_measured() -> None:
    header, rows = _table()
    assert header[:3] == ["photo", "size", "background"] and len(rows) >= 2
    segmenter = LocalSegmenter(EMBEDDED_MODEL, threads=2)
    for row in rows:
        name, size, *percents = row
        stats = json.loads(segmenter.segment(photo_path(name).read_bytes(), "stats").content)
        assert size == f"{stats['width']}×{stats['height']}"
        measured = {c["class_name"]: 100 * c["fraction"] for c in stats["classes"]}
        for class_name, cell in zip(header[2:], percents, strict=True):
            stated = float(re.match(r"([\d.]+) %", cell).group(1))
            assert measured.get(class_name, 0.0) == pytest.approx(stated, abs=1.0), (name, class_name)
        # Every class the model predicted on the photo has a column.
        assert set(measured) <= set(header[2:]), (name, sorted(measured))
