"""Every file of the bad-image corpus (tests/badimages.py) through decode_image."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.decode import decode_image
from service.core.errors import DecodeError
from service.errors import ApiError
from tests.badimages import MAX_SAFE_MAX_PIXELS, MIN_SAFE_MAX_PIXELS, Case, bad_image_corpus

CORPUS = bad_image_corpus()


def test_corpus_is_big_and_varied() -> None:
    assert len(CORPUS) >= 25
    assert len({c.name for c in CORPUS}) == len(CORPUS)
    outcomes = {(c.expected_status, c.expected_code) for c in CORPUS}
    assert {(200, None), (400, "empty_body"), (400, "corrupt_image"), (415, "unsupported_media_type"),
            (413, "image_too_large")} <= outcomes
    for case in CORPUS:
        assert (case.expected_size is not None) == case.ok, case.name


@pytest.mark.parametrize("max_pixels", [MIN_SAFE_MAX_PIXELS, 40_000_000, MAX_SAFE_MAX_PIXELS])
@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_case(case: Case, max_pixels: int) -> None:
    if case.ok:
        out = decode_image(case.data, max_pixels)
        width, height = case.expected_size
        assert out.shape == (height, width, 3)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
    else:
        with pytest.raises(DecodeError) as err:
            decode_image(case.data, max_pixels)
        assert (ApiError.from_decode(err.value).status, err.value.code) == (case.expected_status, case.expected_code)
        assert err.value.message
