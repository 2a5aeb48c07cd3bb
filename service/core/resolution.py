"""The `resolution` an image is segmented at (the long side of its letterbox): a number of pixels, or `native`, the
upload's own long side; unset, the model's input size. Above the input size the image runs in tiles
(service/core/tiles.py). Its spelling and bounds, shared by the API, the clients and the command lines."""

from __future__ import annotations

import argparse
import numbers
from typing import Literal

NATIVE = "native"
# The highest number of pixels asked for: the API's bound on the parameter, checked before the upload is read (the
# tile limit then bounds what a given image may ask).
MAX_RESOLUTION = 32768
Resolution = int | Literal["native"]


def is_resolution(value: object) -> bool:
    """Whether `value` is a resolution the API takes: `native`, or a whole number of pixels from 1 to
    `MAX_RESOLUTION` (a numpy integer too; not a bool, though Python counts it as a number)."""
    if isinstance(value, str):
        return value == NATIVE
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value <= MAX_RESOLUTION


def resolution_argument(text: str) -> Resolution:
    """`--resolution` of the command lines (an argparse type): `native` or a number of pixels, else an
    `argparse.ArgumentTypeError` naming the bounds."""
    value: Resolution
    if text == NATIVE:
        value = NATIVE
    else:
        try:
            value = int(text)
        except ValueError:
            value = 0
    if not is_resolution(value):
        raise argparse.ArgumentTypeError(f"expected a number of pixels from 1 to {MAX_RESOLUTION} or '{NATIVE}', "
                                         f"got {text!r}")
    return value
