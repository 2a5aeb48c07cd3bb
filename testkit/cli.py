"""What a command-line mistake must look like: exit 2 and one line on stderr, with no traceback."""

from __future__ import annotations

import pytest


def one_line_error(code: int, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Assert that a command exited 2 with one stderr line holding each of `expected`; that line."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err
