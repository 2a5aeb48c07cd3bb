"""The user documentation: pictures present and linked, links that resolve, product words only, the bind address
documented where the auth settings are, and the licence the package declares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER_DOCS = [REPO / "README.md", REPO / "models" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
ANY_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
# Words of the process that made the product, not of the product.
PROCESS_WORDS = re.compile(r"\bissue\s*#?\d+|\bas the issue\b|\blent to\b|drawn for a device|device tool|"
                           r"\bsession that wrote\b|\bthis task\b", re.IGNORECASE)


def _links(doc: Path, pattern: re.Pattern[str]) -> list[Path]:
    return [(doc.parent / target).resolve() for target in pattern.findall(doc.read_text())
            if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    missing = [str(p) for p in _links(doc, ANY_LINK) if not p.exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"


def test_every_picture_in_docs_is_shown_somewhere() -> None:
    shown = {p for doc in USER_DOCS for p in _links(doc, IMAGE_LINK)}
    pictures = {p.resolve() for p in (REPO / "docs").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".svg")}
    pictures.discard((REPO / "docs" / "examples" / "scene.jpg").resolve())  # an input for the curl examples
    unlinked = sorted(str(p.relative_to(REPO)) for p in pictures - shown)
    assert not unlinked, f"pictures no document shows: {unlinked}"


def test_readme_shows_an_overlay_the_web_page_and_a_performance_plot() -> None:
    shown = {p.relative_to(REPO).as_posix() for p in _links(REPO / "README.md", IMAGE_LINK)}
    assert "docs/web-screenshot.png" in shown
    assert any(p.startswith("docs/examples/example_") for p in shown)
    assert any(p.startswith("docs/bench-") for p in shown)


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_speak_of_the_product_only(doc: Path) -> None:
    found = [m.group(0) for m in PROCESS_WORDS.finditer(doc.read_text())]
    assert not found, f"{doc.name}: {found}"


def test_bind_address_is_documented_beside_auth_and_the_local_example_uses_loopback() -> None:
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `SEGMENT_")]
    names = [re.match(r"\| `(SEGMENT_\w+)`", row).group(1) for row in rows]
    host = names.index("SEGMENT_HOST")
    assert names[host + 1] == "SEGMENT_API_KEYS", "SEGMENT_HOST belongs next to the auth setting"
    assert "0.0.0.0" in rows[host] and "every interface" in rows[host]
    first_command = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1)
    assert "pip install" in first_command and "SEGMENT_HOST=127.0.0.1" in first_command


def test_licence_file_matches_the_package_metadata() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    # An SPDX expression, not the deprecated `{ text = ... }` table form.
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, re.M)
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
