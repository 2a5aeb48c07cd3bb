"""Repairing pinched polygons for `output=polygons`, in-process and paired: GEOS's default `make_valid`
("linework", what the service did) against its "structure" method, normalised (what it does), on the worst geometry the
answer's bound allows (random specks on a 225 px map: just under `MAX_REPAIR_VERTICES` vertices to repair).

Both must give the same polygons once normalised. Thread CPU-s of the repair alone, medians of the rounds and of
the paired ratios.

Usage: python -m bench.polygons_bench [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np
import shapely

from bench.harness import machine_note
from service.core.outputs import polygons


def worst_map(side: int = 225, specks: float = 0.45, seed: int = 0) -> np.ndarray:
    """A map of random specks: 8-connected, they form huge regions that touch themselves and their holes at
    corners (the background, class 0, is not traced)."""
    return (np.random.default_rng(seed).random((side, side)) < specks).astype(np.uint8)


def pinched_geometries(label_map: np.ndarray) -> np.ndarray:
    """The polygons the service hands to `make_valid` for `label_map` (tolerance 0, min_area 0)."""
    caught: list[np.ndarray] = []
    real = shapely.make_valid

    def spy(geoms: np.ndarray, **kwargs: object) -> np.ndarray:
        caught.append(geoms.copy())
        return real(geoms, **kwargs)

    with mock.patch.object(polygons.shapely, "make_valid", spy):
        polygons.polygons_geojson(label_map, {0: "background", 1: "speck"}, 0, 0)
    return np.concatenate(caught)


def cpu_s(fn: object, geoms: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.thread_time()
    out = fn(geoms)  # type: ignore[operator]
    return time.thread_time() - start, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    geoms = pinched_geometries(worst_map())
    vertices = int(shapely.get_num_coordinates(geoms).sum())
    ways = {"linework": lambda g: shapely.make_valid(g),
            "structure": lambda g: shapely.normalize(shapely.make_valid(g, method="structure", keep_collapsed=False))}
    times: dict[str, list[float]] = {name: [] for name in ways}
    results = {}
    for _ in range(args.rounds):
        for name, way in ways.items():
            seconds, results[name] = cpu_s(way, geoms)
            times[name].append(seconds)
    same = all(shapely.equals(shapely.normalize(results["linework"]), shapely.normalize(results["structure"])))
    assert same, "the two repairs differ"
    ratio = statistics.median(a / b for a, b in zip(times["linework"], times["structure"], strict=True))
    print(f"{machine_note()}; {args.rounds} rounds; {len(geoms)} pinched polygons, {vertices:,} vertices; "
          "thread CPU-s of the repair")
    print(f"linework {statistics.median(times['linework']):.2f}, structure {statistics.median(times['structure']):.2f} "
          f"(paired {ratio:.1f}x); the same polygons normalised: {same}")


if __name__ == "__main__":
    main()
