"""Large images with small objects: mIoU and cost of segmenting at the model's input size against tiled, higher
resolutions (`POST /segment?resolution=`), through the service's own pipeline (`segment-export evaluate`).

The images are mosaics of held-out synthetic scenes (generator seed 1; the embedded model trained on seed 0): a
grid of `--cols` x `--rows` scenes, each drawn at the scale the model was trained to see (a 160-px scene shown
at 320). At the default resolution the whole mosaic is shrunk to the model's 320 px and every object with it;
`native` runs it in tiles at the scale of training. Written to docs/BENCHMARKS.md.

    python -m bench.tiles_bench [--images 12] [--cols 4] [--rows 3] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.harness import machine_note
from bench.markdown import write_section
from model_export.evaluate import evaluate_model
from model_export.synthetic_mosaic import CELL, write_mosaics
from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.pipeline import Pipeline
from service.settings import default_model_path


def tiles_per_image(resolution: int | str | None, cols: int, rows: int) -> int:
    """Model inputs one mosaic runs in at `resolution` (1: whole)."""
    pipeline = Pipeline(load_engine(EngineOptions(model_path=default_model_path(), providers="cpu")))
    grid = pipeline.tile_grid(rows * CELL, cols * CELL, resolution)
    return 1 if grid is None else len(grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--cols", type=int, default=4)
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = ap.parse_args()
    width, height = args.cols * CELL, args.rows * CELL
    resolutions: list[int | str | None] = [None, width // 2, 3 * width // 4, "native"]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_mosaics(Path(root), args.images, args.cols, args.rows)
        for resolution in resolutions:
            cpu, wall = time.process_time(), time.perf_counter()
            scores, _ = evaluate_model(default_model_path(), root, "val", protocol="letterbox", device="cpu",
                                       progress=False, resolution=resolution)
            cpu_ms = (time.process_time() - cpu) / args.images * 1000
            wall_ms = (time.perf_counter() - wall) / args.images * 1000
            rows.append((resolution, tiles_per_image(resolution, args.cols, args.rows), scores.miou,
                         scores.pixel_accuracy, cpu_ms, wall_ms))
    lines = ["### Large images with small objects (`resolution`, tiled inference)", "",
             f"Command: `python -m bench.tiles_bench --images {args.images} --cols {args.cols} --rows {args.rows}`. "
             f"{args.images} images of {width}x{height}, each a mosaic of {args.cols * args.rows} held-out synthetic "
             f"scenes drawn at the scale the embedded model was trained to see, scored with the service's own "
             f"pipeline (`segment-export evaluate --resolution`); CPU and wall time per image include the JPEG "
             f"decode and the scoring. {machine_note()}.", "",
             "| resolution | model runs per image | mIoU | pixel accuracy | CPU-ms per image | wall ms per image |",
             "|---|---|---|---|---|---|"]
    for resolution, tiles, miou, accuracy, cpu_ms, wall_ms in rows:
        name = "default (input size 320)" if resolution is None else f"`{resolution}`"
        lines.append(f"| {name} | {tiles} | {miou:.4f} | {accuracy:.4f} | {cpu_ms:.0f} | {wall_ms:.0f} |")
    text = "\n".join(lines)
    print(text)
    write_section(args.out, "tiles", text)


if __name__ == "__main__":
    main()
