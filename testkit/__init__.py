"""Support code for the tests and the benchmarks: a `segment-serve` launcher, photo fixtures, request bodies and
load drivers that both `tests/` and `bench/` use, so that neither imports the other.

Not part of the product: the wheel ships only service, model_export and clients (pyproject's packages.find).
"""

from __future__ import annotations

from pathlib import Path

# The checkout root: the default working directory of a served checkout, and where the docs live.
REPO = Path(__file__).resolve().parent.parent
