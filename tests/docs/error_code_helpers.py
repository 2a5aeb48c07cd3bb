"""The README's list of error codes, read as code -> status, for the tests that hold the service to it."""

from __future__ import annotations

import re

from testkit import REPO


def codes_in_readme() -> dict[str, int]:
    """code -> status, from the README's paragraph: each code's status is the first one written after it."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("with a stable `code`:", readme.index("Errors are JSON"))
    text = readme[start + len("with a stable `code`:"):readme.index("Every response carries `X-Request-ID`")]
    listed = {}
    for match in re.finditer(r"`([a-z][a-z_]*[a-z])`", text):
        status = re.search(r"\b([45]\d\d)\b", text[match.end():])
        assert status, f"no status after {match.group(1)}"
        listed.setdefault(match.group(1), int(status.group(1)))
    return listed
