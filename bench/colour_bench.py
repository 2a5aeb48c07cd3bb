"""The colour answer's CPU cost, in-process and paired: the library way against the service's.

For 1024x768 uploads of the test photos through the embedded model, each round times, one after the other:
- colouring: Pillow's palette conversion of the upload-size map (`colorize(label_map.full)`) against
  `colour_map` (the model's map coloured, then the colours resized as the labels are);
- the colour PNG: that full-size colouring written by OpenCV's libpng (RLE strategy, Up filter: the settings the
  service used) against `encode_color_png` (each model row coloured once, written by `service.outputs.png`);
and checks that both ways give the same pixels. Process CPU-ms per image, medians of the rounds and of the paired
ratios, OpenCV on one thread as the server runs it.

Usage: python -m bench.colour_bench [--rounds 15]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image

from bench.harness import machine_note
from service.core.engine import load_engine
from service.core.letterbox import letterbox
from service.core.outputs.labelmap import LabelMap
from service.core.outputs.masks import colorize, colour_map, encode_color_png
from service.settings import Settings
from testkit.photos import PHOTOS, photo

LIBPNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                 cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def answers() -> tuple[list[tuple[np.ndarray, Any]], Any]:
    """The embedded model's letterboxed answers for the test photos at 1024x768, and the palette."""
    engine = load_engine(Settings(fixed_shapes="off").engine_options())
    out = []
    for name in PHOTOS:
        tensor, info = letterbox(photo(name, size=(1024, 768)), engine.input_size, engine.metadata.pad_rgb)
        out.append((engine.run(tensor[None])[0], info))
    return out, engine.metadata.palette


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    maps, palette = answers()

    bgr_palette = [colour[::-1] for colour in palette]  # OpenCV writes BGR: the palette reversed, as it was

    def libpng_png(label_map: LabelMap) -> bytes:
        return cv2.imencode(".png", colorize(label_map.full, bgr_palette), LIBPNG_PARAMS)[1].tobytes()

    for raw, info in maps:  # the same pixels both ways
        label_map = LabelMap.from_model(raw, info)
        assert np.array_equal(colour_map(label_map, palette), colorize(label_map.full, palette))
        mine, theirs = (np.asarray(Image.open(io.BytesIO(data))) for data in
                        (encode_color_png(label_map, palette), libpng_png(label_map)))
        assert np.array_equal(mine, theirs)

    ways: dict[str, Callable[[LabelMap], Any]] = {
        "colouring, full map (Pillow)": lambda m: colorize(m.full, palette),
        "colouring, model map + resize": lambda m: colour_map(m, palette),
        "colour PNG, OpenCV libpng": libpng_png,
        "colour PNG, model rows": lambda m: encode_color_png(m, palette),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():  # a fresh LabelMap each time: nothing cached between calls
            start = time.process_time()
            for raw, info in maps:
                way(LabelMap.from_model(raw, info))
            times[name].append((time.process_time() - start) / len(maps) * 1000)
    names = list(ways)
    print(f"{machine_note()}; {args.rounds} rounds, 1024x768 answers of {len(maps)} photos, CPU-ms per image")
    for before, after in (names[:2], names[2:]):
        ratio = statistics.median(b / a for b, a in zip(times[before], times[after], strict=True))
        print(f"{before}: {statistics.median(times[before]):.2f}  {after}: {statistics.median(times[after]):.2f}"
              f"  (paired {ratio:.1f}x)")


if __name__ == "__main__":
    main()
